// Bundles the web app into dist/ (what `syncd serve --web-root` serves):
// one ES module, its stylesheet and index.html.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const out = new URL("./dist/", import.meta.url);
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: { app: "src/app/main.ts" },
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  outdir: "dist",
  logLevel: "warning",
});
await copyFile(new URL("./src/app/app.css", import.meta.url), new URL("app.css", out));
await copyFile(new URL("./src/index.html", import.meta.url), new URL("index.html", out));
