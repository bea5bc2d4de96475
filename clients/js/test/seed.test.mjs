// The seed client's way of connecting must keep working against fieldgate, and the
// reconnecting helper must resume without gaps. Runs against a real `fieldgate demo`
// (FIELDGATE_BIN points at the binary; the Rust test tests/js_client.rs sets it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import WebSocket from 'ws';
import { clientSocket, TMD, reconnectingSocket } from '../fieldgate.mjs';

const BIN = process.env.FIELDGATE_BIN;
const KEY = 'fg_node_test_key';

async function freePort() {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function startDemo(port, data) {
  assert.ok(BIN, 'FIELDGATE_BIN must point at the fieldgate binary');
  const child = spawn(BIN, ['demo', '--listen', `127.0.0.1:${port}`, '--api-key', KEY, '--data', data],
    { stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.end(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (ok) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error('fieldgate demo did not start');
}

function stop(child) {
  return new Promise((resolve) => { child.once('exit', resolve); child.kill('SIGTERM'); });
}

function nextOfType(ws, type) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} within 15 s`)), 15000);
    const on = (raw) => {
      const m = JSON.parse(raw);
      if (m.type === type) { clearTimeout(timer); ws.off('message', on); resolve(m); }
    };
    ws.on('message', on);
  });
}

test('seed-style ws client: subprotocol name, x-api-key header, TMD envelopes', async () => {
  const port = await freePort();
  const child = await startDemo(port, join(mkdtempSync(join(tmpdir(), 'fg-js-')), 'journal'));
  try {
    // Exactly the seed's call: new WebSocket(url, [client], { headers }).
    const ws = new WebSocket(`ws://127.0.0.1:${port}`, ['seed-client'], { headers: { 'x-api-key': KEY } });
    const welcome = await nextOfType(ws, 'welcome');
    assert.equal(ws.protocol, 'seed-client');
    assert.deepEqual(Object.keys(welcome).sort(), ['data', 'message', 'type']);
    assert.equal(welcome.data.client, 'seed-client');
    const frame = await nextOfType(ws, 'frame');
    assert.ok(frame.data.seq > 0);
    assert.ok(['gps', 'obd'].includes(frame.data.kind));
    ws.send(JSON.stringify(TMD({ type: 'ping', data: { n: 1 } })));
    assert.equal((await nextOfType(ws, 'pong')).data.n, 1);
    ws.close();

    // The module's clientSocket does the same.
    const ws2 = clientSocket('module-client', { url: `ws://127.0.0.1:${port}`, key: KEY });
    assert.equal((await nextOfType(ws2, 'welcome')).data.client, 'module-client');
    ws2.close();

    // A wrong key is refused before the upgrade.
    const bad = clientSocket('intruder', { url: `ws://127.0.0.1:${port}`, key: 'fg_wrong' });
    const status = await new Promise((resolve) => bad.on('unexpected-response', (_req, res) => resolve(res.statusCode)));
    assert.equal(status, 401);
  } finally {
    await stop(child);
  }
});

test('reconnecting helper resumes after a gateway restart with no gap and no duplicate', async () => {
  const port = await freePort();
  const data = join(mkdtempSync(join(tmpdir(), 'fg-js-')), 'journal');
  let child = await startDemo(port, data);
  const seqs = [];
  const sub = reconnectingSocket('resumer', {
    url: `ws://127.0.0.1:${port}`, key: KEY, fromSeq: 1, minDelayMs: 100,
    onFrame: (f) => seqs.push(f.seq),
  });
  try {
    const waitFor = async (pred, what) => {
      for (let i = 0; i < 300 && !pred(); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(pred(), what);
    };
    await waitFor(() => seqs.length >= 10, 'frames before restart');
    await stop(child);
    const before = seqs.length;
    child = await startDemo(port, data);
    await waitFor(() => seqs.length >= before + 10, 'frames after restart');
    for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `gap or duplicate at ${i}`);
    assert.equal(seqs[0], 1);
  } finally {
    sub.close();
    await stop(child);
  }
});

test('TMD validates its input', () => {
  assert.deepEqual(TMD({ type: 'ping' }), { type: 'ping', message: '', data: null });
  assert.throws(() => TMD({}), TypeError);
});
