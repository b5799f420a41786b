// What the web tests share: real `syncd` processes (started on 127.0.0.1:0,
// restarted on the same port), tokens, the `tl` CLI, and the output
// directory for screenshots. The binaries come from the cargo build
// (target/debug, or TIMELINE_BIN_DIR); a missing one fails the test.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const WEB_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const REPO_DIR = resolve(WEB_DIR, "..");
export const BIN_DIR = resolve(process.env.TIMELINE_BIN_DIR ?? join(REPO_DIR, "target", "debug"));
/** Screenshots and logs of the web tests. */
export const OUTPUT_DIR = join(REPO_DIR, "target", "web-test");
/** How long a server may take to print its listening line. */
export const STARTUP_TIMEOUT_MS = 30_000;

export function bin(name) {
  const path = join(BIN_DIR, name);
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: build it first (cargo build -p syncd -p client)`);
  }
  return path;
}

export function outputDir() {
  mkdirSync(OUTPUT_DIR, { recursive: true });
  return OUTPUT_DIR;
}

export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), `${prefix}-`));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A `syncd serve` child process. */
export class Syncd {
  constructor(dataDir, extraArgs) {
    this.dataDir = dataDir;
    this.extraArgs = extraArgs;
    this.child = null;
    this.addr = null;
  }

  static async start(extraArgs = []) {
    const server = new Syncd(tempDir("syncd-web"), extraArgs);
    await server.spawn("127.0.0.1:0");
    return server;
  }

  get url() {
    return `http://${this.addr}`;
  }

  async spawn(listen) {
    const child = spawn(
      bin("syncd"),
      ["serve", "--data-dir", this.dataDir, "--listen", listen, ...this.extraArgs],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    const lines = createInterface({ input: child.stdout });
    const addr = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("syncd printed no listening line")), STARTUP_TIMEOUT_MS);
      lines.on("line", (line) => {
        const match = /^listening on (\S+)$/.exec(line);
        if (match) {
          clearTimeout(timer);
          resolve(match[1]);
        }
      });
      exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`syncd exited before listening (code ${code}, signal ${signal})`));
      });
    });
    this.child = child;
    this.exited = exited;
    this.addr = addr;
  }

  /** SIGTERM (a clean shutdown: push streams end, calls finish). */
  async stop() {
    if (!this.child) return;
    const exited = this.exited;
    this.child.kill("SIGTERM");
    const { code } = await exited;
    this.child = null;
    if (code !== 0) throw new Error(`syncd exited with ${code} after SIGTERM`);
  }

  kill9() {
    this.child?.kill("SIGKILL");
    this.child = null;
  }

  /** Starts again on the same port and data directory. */
  async startAgain() {
    const deadline = Date.now() + STARTUP_TIMEOUT_MS;
    for (;;) {
      try {
        await this.spawn(this.addr);
        return;
      } catch (error) {
        // The port can stay taken for a moment after the old process.
        if (Date.now() > deadline) throw error;
        await sleep(100);
      }
    }
  }

  token(args) {
    const out = spawnSync(bin("syncd"), ["token", "--data-dir", this.dataDir, ...args], { encoding: "utf8" });
    if (out.status !== 0) throw new Error(`syncd token failed: ${out.stderr}`);
    return out.stdout.trim();
  }

  deviceToken(userId, deviceId) {
    return this.token(["--user", String(userId), "--device", deviceId]);
  }

  serviceToken(name) {
    return this.token(["--service", name]);
  }

  /** Runs `tl`; returns its stdout, throws on a non-zero exit. */
  tl(token, args) {
    const out = spawnSync(bin("tl"), ["--server", this.url, "--token", token, ...args], { encoding: "utf8" });
    if (out.status !== 0) throw new Error(`tl ${args.join(" ")} failed (${out.status}): ${out.stderr}`);
    return out.stdout;
  }

  /** `tl` without waiting (for a sender that keeps going). */
  tlAsync(token, args) {
    return new Promise((resolve, reject) => {
      const child = spawn(bin("tl"), ["--server", this.url, "--token", token, ...args], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d) => (stdout += d));
      child.stderr.on("data", (d) => (stderr += d));
      child.on("exit", (code) =>
        code === 0 ? resolve(stdout) : reject(new Error(`tl ${args.join(" ")} failed (${code}): ${stderr}`)),
      );
    });
  }

  /** JSON lines of a `tl` command. */
  tlJson(token, args) {
    return this.tl(token, args)
      .split("\n")
      .filter((line) => line.trim())
      .map((line) => JSON.parse(line));
  }
}
