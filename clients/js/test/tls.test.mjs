// The Node client over WSS against a real `fieldgate run` with a self-signed board
// certificate made by `fieldgate tls self-signed`: trusted by pinned fingerprint or as a CA
// file; a wrong fingerprint fails before the key leaves the client.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { clientSocket } from '../fieldgate.mjs';

const BIN = process.env.FIELDGATE_BIN;

async function freePort() {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function firstMessage(ws) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('nothing within 15 s')), 15000);
    ws.once('message', (raw) => { clearTimeout(timer); resolve(JSON.parse(raw)); });
    ws.once('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

test('wss with a pinned fingerprint or the board certificate as CA; a wrong pin never sends the key', async () => {
  assert.ok(BIN, 'FIELDGATE_BIN must point at the fieldgate binary');
  const dir = mkdtempSync(join(tmpdir(), 'fg-js-tls-'));
  const port = await freePort();
  const config = join(dir, 'fieldgate.toml');
  writeFileSync(config, `[gateway]\nid = "gw-tls"\n[journal]\npath = "${join(dir, 'journal')}"\n`
    + `[listen]\naddress = "127.0.0.1:${port}"\ntls_cert = "${join(dir, 'board.crt')}"\ntls_key = "${join(dir, 'board.key')}"\n`
    + '[[sources.sim]]\nname = "sim"\n');
  const fingerprint = execFileSync(BIN, ['tls', 'self-signed', '--host', '127.0.0.1', '--config', config],
    { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  assert.match(fingerprint, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  const key = execFileSync(BIN, ['keys', 'add', 'node', '--scopes', 'read', '--config', config],
    { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  let log = '';
  const child = spawn(BIN, ['run', '--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr.on('data', (b) => { log += b; });
  try {
    for (let i = 0; i < 200 && !log.includes('API listening'); i++) await new Promise((r) => setTimeout(r, 50));
    assert.match(log, /API listening.*scheme=https/);
    const url = `wss://127.0.0.1:${port}/ws`;

    const pinned = clientSocket('pinned', { url, key, fingerprint: `sha256:${fingerprint.replace(/:/g, '').toLowerCase()}` });
    const welcome = await firstMessage(pinned);
    assert.equal(welcome.type, 'welcome');
    assert.equal(welcome.data.client, 'pinned');
    pinned.close();

    const viaCa = clientSocket('ca-file', { url, key, ca: readFileSync(join(dir, 'board.crt')) });
    assert.equal((await firstMessage(viaCa)).type, 'welcome');
    viaCa.close();

    // Without either, Node's default trust refuses the self-signed certificate.
    const untrusted = clientSocket('default-trust', { url, key });
    await assert.rejects(firstMessage(untrusted), /self-signed|self signed/);

    // A wrong pin: refused after the handshake, before the request; the gateway never
    // sees the (wrong) key it would otherwise log as unknown.
    const wrong = clientSocket('wrong-pin', { url, key: 'fg_not_a_key_0123456789', fingerprint: 'AA:'.repeat(31) + 'AA' });
    await assert.rejects(firstMessage(wrong), /not the pinned/);
    // Control: the same wrong key over a correctly pinned connection is logged; then the
    // log holds that one line only.
    const control = clientSocket('control', { url, key: 'fg_not_a_key_0123456789', fingerprint });
    await assert.rejects(firstMessage(control), /401/);
    for (let i = 0; i < 100 && !log.includes('unknown API key'); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(log.match(/unknown API key/g)?.length, 1, log);
  } finally {
    await new Promise((resolve) => { child.once('exit', resolve); child.kill('SIGTERM'); });
  }
});
