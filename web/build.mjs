// Bundles the web app into dist/ (what `syncd serve --web-root` serves):
// one ES module, its stylesheet and index.html.
import { build } from "esbuild";
import { copyFile, mkdir, readdir, rm } from "node:fs/promises";

// `node build.mjs --tests`: the library's unit tests (src/lib/*.test.ts),
// bundled for Node into build-test/ and run by `npm test`.
if (process.argv.includes("--tests")) {
  const tests = (await readdir(new URL("./src/lib/", import.meta.url))).filter((f) => f.endsWith(".test.ts"));
  await rm(new URL("./build-test/", import.meta.url), { recursive: true, force: true });
  await build({
    entryPoints: tests.map((f) => `src/lib/${f}`),
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node18",
    outdir: "build-test",
    outExtension: { ".js": ".mjs" },
    packages: "external",
    logLevel: "warning",
  });
  process.exit(0);
}

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
