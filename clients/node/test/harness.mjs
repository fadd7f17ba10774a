// A real grantvault for the integration tests: the local oidc-provider
// (tests/provider) and, for proxy tests, the stand-in API (tests/api), both
// on 127.0.0.1 with a fresh certificate; grantvaultd on a temporary state
// directory (its embedded SoftHSM2 token and SQLite store, as ./run.sh uses);
// the provider registered as connector "demo" with the grantvault CLI; and a
// workspace authorized through `grantvault authorize --paste` with
// tests/provider/approve.mjs playing the user.
//
// Binaries: $GRANTVAULT_BUILD_DIR/daemon/grantvaultd and
// $GRANTVAULT_BUILD_DIR/cli/grantvault (default: the repository's build/).
// Every wait is bounded; stop() (and, as a last resort, process exit) kills
// every process started here and removes the directory.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const repoRoot = resolve(packageDir, '..', '..');
export const buildDir = resolve(process.env.GRANTVAULT_BUILD_DIR ?? join(repoRoot, 'build'));
export const grantvaultd = join(buildDir, 'daemon', 'grantvaultd');
export const grantvaultCli = join(buildDir, 'cli', 'grantvault');
const providerDir = join(repoRoot, 'tests', 'provider');
const apiServer = join(repoRoot, 'tests', 'api', 'server.mjs');

export const WORKSPACE = 'ws_node';
export const CONNECTOR = 'demo';
export const CLIENT_ID = 'grantvault-node-test';

/** Why the integration tests cannot run here, or null. */
export function missingPrerequisite() {
  for (const file of [grantvaultd, grantvaultCli]) {
    if (!existsSync(file)) return `${file} is missing: build grantvault or set GRANTVAULT_BUILD_DIR`;
  }
  if (!existsSync(join(providerDir, 'node_modules', 'oidc-provider'))) {
    return `${providerDir}/node_modules is missing: npm ci there (scripts/install-deps.sh does)`;
  }
  return null;
}

export const sha256Hex = (data) => createHash('sha256').update(data).digest('hex');

const live = new Set(); // every child process not yet reaped, for the exit hook
const dirs = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** Resolves after `ms`, or rejects with `what` timed out when `promise` takes longer. */
export function within(ms, what, promise) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (sync or async, truthy = done) every 50 ms for at most `ms`. */
export async function waitFor(ms, what, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const result = await check();
    if (result) return result;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(50);
  }
}

/** A child process whose output is kept, and lines can be awaited. */
class Child {
  constructor(name, command, args, options = {}) {
    this.name = name;
    this.stdout = '';
    this.stderr = '';
    this.process = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], ...options });
    live.add(this.process);
    this.exited = new Promise((resolveExit) => {
      this.process.once('exit', (code, signal) => {
        live.delete(this.process);
        this.exitCode = code ?? 128;
        this.exitSignal = signal;
        resolveExit(code ?? signal);
      });
    });
    this.process.stdout.setEncoding('utf8').on('data', (s) => { this.stdout += s; });
    this.process.stderr.setEncoding('utf8').on('data', (s) => { this.stderr += s; });
    this.process.once('error', (e) => { this.stderr += `spawn: ${e.message}\n`; });
  }

  get running() {
    return this.exitCode === undefined;
  }

  /** The first match of `regex` on stdout, within `ms`. */
  async line(regex, ms) {
    return waitFor(ms, `${this.name} printing ${regex}`, () => {
      if (!this.running && !regex.test(this.stdout)) {
        throw new Error(`${this.name} exited (${this.exitCode ?? this.exitSignal}) before printing ${regex}:\n${this.stderr.slice(-3000)}`);
      }
      return regex.exec(this.stdout);
    });
  }

  /** SIGTERM, then SIGKILL after `ms`; resolves once it exited. */
  async stop(ms = 10_000) {
    if (!this.running) return;
    this.process.kill('SIGTERM');
    const timer = setTimeout(() => this.process.kill('SIGKILL'), ms);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Runs a command to completion, killed after `timeoutMs`: {code, stdout, stderr}. */
export function runAsync(command, args, { input, timeoutMs = 30_000 } = {}) {
  const child = new Child(command, command, args);
  if (input !== undefined) child.process.stdin.end(input);
  else child.process.stdin.end();
  const timer = setTimeout(() => child.process.kill('SIGKILL'), timeoutMs);
  return child.exited.then(() => {
    clearTimeout(timer);
    return { code: child.exitCode, stdout: child.stdout, stderr: child.stderr };
  });
}

export class Vault {
  /**
   * @param {object} options
   * @param {boolean} [options.api] also start the stand-in API and register the connector with
   *   it as API base (the proxy's --api-base and --private-network), tools with http limits
   * @param {string} [options.extraConfig] TOML appended to grantvaultd.toml
   * @param {Array<object>} [options.tools] the workspace's tools (name, connector, scopes, http?)
   */
  static async start(options = {}) {
    const vault = new Vault(options);
    try {
      await vault.init();
      return vault;
    } catch (e) {
      await vault.stop();
      throw e;
    }
  }

  constructor(options) {
    this.options = options;
    this.dir = mkdtempSync(join(tmpdir(), 'gv-node-'));
    dirs.add(this.dir);
    chmodSync(this.dir, 0o700);
    this.stateDir = join(this.dir, 'state');
    this.agentSocket = join(this.stateDir, 'run', 'agent.sock');
    this.caFile = join(this.dir, 'cert.pem');
    this.children = [];
  }

  get tools() {
    return this.options.tools ?? [
      { name: 'read_profile', connector: CONNECTOR, scopes: ['read'] },
    ];
  }

  async init() {
    const cert = await runAsync(join(providerDir, 'provider-cert.sh'), [this.dir]);
    if (cert.code !== 0) throw new Error(`provider-cert.sh: ${cert.stderr}`);
    this.clientSecret = randomBytes(24).toString('base64url');
    this.secretFile = join(this.dir, 'client.secret');
    writeFileSync(this.secretFile, this.clientSecret, { mode: 0o600 });
    const clients = join(this.dir, 'clients.json');
    writeFileSync(clients, JSON.stringify([{
      client_id: CLIENT_ID, client_secret: this.clientSecret, redirect_uris: ['http://127.0.0.1/callback'],
    }]), { mode: 0o600 });

    // Access tokens that outlive the tests: no refresh-ahead, so refreshes are only the ones a test causes.
    this.provider = this.spawn('oidc-provider', process.execPath, [
      join(providerDir, 'server.mjs'), '--cert', this.caFile, '--key', join(this.dir, 'key.pem'), '--clients', clients,
    ], { env: { ...process.env, GV_PROVIDER_AT_TTL: '3600' } });
    this.issuer = (await this.provider.line(/^READY (\S+)$/m, 20_000))[1];

    if (this.options.api) {
      this.api = this.spawn('api', process.execPath, [apiServer, '--cert', this.caFile, '--key', join(this.dir, 'key.pem')]);
      this.apiPort = Number((await this.api.line(/^PORT (\d+)$/m, 10_000))[1]);
      await this.api.line(/^READY$/m, 10_000);
      this.apiBase = `https://127.0.0.1:${this.apiPort}`;
    }

    this.writeConfig();
    await this.startDaemon();
    const register = await this.cli(['connectors', 'register', '--id', CONNECTOR, '--type', 'oidc',
      '--client-id', CLIENT_ID, '--client-secret-file', this.secretFile, '--issuer', this.issuer,
      ...(this.options.api ? ['--api-base', `${this.apiBase}/`, '--private-network'] : [])]);
    if (register.code !== 0) throw new Error(`connectors register (exit ${register.code}): ${register.stderr}`);
    this.grant = await this.authorize();
  }

  writeConfig() {
    const policy = join(this.dir, 'policy.toml');
    const quote = (s) => JSON.stringify(s);
    const list = (xs) => `[${xs.map(quote).join(', ')}]`;
    let toml = `[[callers]]\nuid = ${process.getuid()}\nrole = "agent"\nworkspaces = [${quote(WORKSPACE)}]\n\n[workspaces.${WORKSPACE}]\n`;
    for (const tool of this.tools) {
      toml += `\n[[workspaces.${WORKSPACE}.tools]]\nname = ${quote(tool.name)}\nconnector = ${quote(tool.connector)}\nscopes = ${list(tool.scopes)}\n`;
      if (tool.http) toml += `http = ${list(tool.http)}\n`;
    }
    writeFileSync(policy, toml, { mode: 0o644 });
    this.config = join(this.dir, 'grantvaultd.toml');
    writeFileSync(this.config, `[oauth]\nca_file = ${quote(this.caFile)}\nuse_system_trust_store = false\n`
      + `[policy]\nfile = ${quote(policy)}\n${this.options.extraConfig ?? ''}`, { mode: 0o644 });
  }

  spawn(name, command, args, options) {
    const child = new Child(name, command, args, options);
    child.process.stdin.end();
    this.children.push(child);
    return child;
  }

  async startDaemon() {
    const flags = process.getuid() === 0 ? ['--allow-root'] : [];
    this.daemon = this.spawn('grantvaultd', grantvaultd, [...flags, '--state-dir', this.stateDir, '--config', this.config]);
    await waitFor(30_000, 'grantvaultd answering status', async () => {
      if (!this.daemon.running) throw new Error(`grantvaultd exited (${this.daemon.exitCode}):\n${this.daemon.stderr.slice(-3000)}`);
      return (await this.cli(['status'], { timeoutMs: 5_000 })).code === 0;
    });
  }

  async stopDaemon() {
    await this.daemon.stop(20_000);
  }

  async restartDaemon() {
    await this.stopDaemon();
    await this.startDaemon();
  }

  /** The grantvault CLI on admin.sock: {code, stdout, stderr}. */
  cli(args, { input, timeoutMs = 30_000 } = {}) {
    return runAsync(grantvaultCli, ['--state-dir', this.stateDir, '--timeout', String(Math.ceil(timeoutMs / 1000)),
      '--admin', 'node-test', ...args], { input, timeoutMs: timeoutMs + 5_000 });
  }

  /** `grantvault authorize --paste`, the user played by approve.mjs; returns the grant id. */
  async authorize(scopes = 'openid offline_access read') {
    const cli = new Child('grantvault authorize', grantvaultCli, ['--state-dir', this.stateDir, '--admin', 'node-test',
      '--json', 'authorize', '--workspace', WORKSPACE, '--connector', CONNECTOR, '--scopes', scopes, '--paste']);
    const timer = setTimeout(() => cli.process.kill('SIGKILL'), 30_000);
    try {
      const url = (await cli.line(/^(https:\/\/\S+)$/m, 15_000))[1];
      const approved = await runAsync(process.execPath, [join(providerDir, 'approve.mjs'), '--ca', this.caFile,
        '--user', 'alice', url], { timeoutMs: 15_000 });
      if (approved.code !== 0) throw new Error(`approve.mjs: ${approved.stderr}`);
      cli.process.stdin.end(approved.stdout);
      await cli.exited;
      if (cli.exitCode !== 0) throw new Error(`authorize (exit ${cli.exitCode}): ${cli.stderr}`);
      const answer = JSON.parse(cli.stdout.split('\n').find((l) => l.startsWith('{')));
      return answer.grant.grant_id;
    } finally {
      clearTimeout(timer);
      if (cli.running) cli.process.kill('SIGKILL');
    }
  }

  async revoke(reason = 'node client test') {
    const r = await this.cli(['revoke', '--workspace', WORKSPACE, '--connector', CONNECTOR, '--reason', reason]);
    if (r.code !== 0) throw new Error(`revoke (exit ${r.code}): ${r.stderr}`);
  }

  /** How many refresh_token grants the provider has served (its stderr, written before each answer). */
  refreshesServed() {
    return (this.provider.stderr.match(/^provider: grant\.success: refresh_token$/gm) ?? []).length;
  }

  /** POST to one of the stand-in API's control routes; its JSON answer. */
  apiControl(path) {
    return within(10_000, `API ${path}`, new Promise((resolveAnswer, reject) => {
      const req = httpsRequest(`${this.apiBase}${path}`, { method: 'POST', ca: readFileSync(this.caFile) }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => { body += d; });
        res.on('end', () => {
          try {
            resolveAnswer(JSON.parse(body));
          } catch (e) {
            reject(e);
          }
        });
      });
      req.on('error', reject);
      req.end();
    }));
  }

  async stop() {
    await Promise.all(this.children.map((c) => c.stop()));
    rmSync(this.dir, { recursive: true, force: true });
    dirs.delete(this.dir);
  }
}
