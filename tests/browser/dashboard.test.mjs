// The dashboard in a real browser: Debian's chromium, driven by playwright-core, against a
// real `fieldgate demo` that also reads a real mosquitto. tests/browser.rs runs this with
// FIELDGATE_BIN (the binary), FIELDGATE_TEST_MQTT_PORT (a running mosquitto) and
// FIELDGATE_BROWSER_OUT (where screenshots go, under target/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import net from 'node:net';
import { chromium } from 'playwright-core';

const BIN = process.env.FIELDGATE_BIN;
const MQTT_PORT = process.env.FIELDGATE_TEST_MQTT_PORT;
const OUT = process.env.FIELDGATE_BROWSER_OUT;
const KEY = 'fg_browser_test_key_0123456789';
const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

async function freePort() {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function until(pred, what, ms = 20000) {
  const t0 = Date.now();
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** `fieldgate demo` on `port` with `data`, reading the broker; resolves with its first stdout lines. */
async function startDemo(port, data) {
  const child = spawn(BIN, ['demo', '--listen', `127.0.0.1:${port}`, '--api-key', KEY, '--data', data,
    '--mqtt', `mqtt://127.0.0.1:${MQTT_PORT}`], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (b) => { out += b; });
  await until(() => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.end(); resolve(true); });
    s.on('error', () => resolve(false));
  }), 'the demo to listen');
  await until(async () => {
    const r = await fetch(`http://127.0.0.1:${port}/api/status`, { headers: { 'x-api-key': KEY } });
    const s = await r.json();
    return s.sources?.mqtt?.state === 'running';
  }, 'the demo MQTT source to connect');
  return { child, lines: () => out.split('\n') };
}

function stop(child) {
  return new Promise((resolve) => { child.once('exit', resolve); child.kill('SIGTERM'); });
}

function publish(topic, payload) {
  execFileSync('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(MQTT_PORT), '-q', '1', '-t', topic, '-m', payload]);
}

const cellText = (page, table, rowMatch, col) => page.evaluate(([t, m, c]) => {
  for (const tr of document.querySelectorAll(`#${t} tbody tr`)) {
    if (tr.cells[0]?.textContent === m) return tr.cells[c]?.textContent ?? null;
  }
  return null;
}, [table, rowMatch, col]);

test('the dashboard in chromium: key, live vehicle and feed, XSS as text, resume after a restart, CORS', async () => {
  assert.ok(BIN && MQTT_PORT && OUT, 'FIELDGATE_BIN, FIELDGATE_TEST_MQTT_PORT and FIELDGATE_BROWSER_OUT must be set');
  mkdirSync(OUT, { recursive: true });
  const port = await freePort();
  const data = join(mkdtempSync(join(tmpdir(), 'fg-browser-')), 'journal');
  let demo = await startDemo(port, data);
  const base = `http://127.0.0.1:${port}`;
  assert.ok(demo.lines().slice(0, 3).some((l) => l.includes(`Dashboard: ${base}/`)),
    `the demo's first lines name the dashboard URL:\n${demo.lines().join('\n')}`);

  const profile = mkdtempSync(join(tmpdir(), 'fg-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_FLAGS,
  });
  const other = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>fleet tool</title>');
  });
  try {
    const page = browser.pages()[0] ?? await browser.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    // Failed requests (the wrong key's 401, the restart's refused connections) are expected;
    // a blocked script or style (CSP) never is.
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/.test(m.text())) problems.push(`console: ${m.text()}`);
    });
    // Every live frame the page receives, per WebSocket, after its `subscribed`.
    const streams = [];
    page.on('websocket', (ws) => {
      const s = { subscribed: false, seqs: [] };
      streams.push(s);
      ws.on('framereceived', ({ payload }) => {
        const m = JSON.parse(String(payload));
        if (m.type === 'subscribed') s.subscribed = true;
        if (m.type === 'frame' && s.subscribed) s.seqs.push(m.data.seq);
      });
    });

    // First load: what the browser transferred for the page and its assets.
    await page.goto(`${base}/`);
    await page.waitForLoadState('load');
    const bytes = await page.evaluate(() => performance.getEntries()
      .filter((e) => e.entryType === 'navigation' || e.entryType === 'resource')
      .map((e) => ({ name: e.name, size: e.transferSize })));
    const total = bytes.reduce((a, b) => a + b.size, 0);
    console.log(`first load: ${total} bytes transferred (${bytes.map((b) => `${new URL(b.name).pathname} ${b.size}`).join(', ')})`);
    assert.ok(total > 0 && total <= 150 * 1024, `first load ${total} bytes`);
    assert.equal(await page.textContent('#conn'), 'not connected');

    // A wrong key: a clear message, no session.
    await page.fill('#key', 'fg_not_the_key_0123456789');
    await page.click('#connect');
    await page.waitForSelector('#error:not([hidden])');
    assert.match(await page.textContent('#error'), /does not accept this API key/);
    assert.equal(await page.textContent('#conn'), 'not connected');

    // The right key: live, the vehicle moves, the feed grows.
    await page.fill('#key', KEY);
    await page.click('#connect');
    await until(async () => (await page.textContent('#conn')) === 'live', 'the live badge');
    assert.equal(await page.isHidden('#error'), true, 'the old error is gone');
    const pos1 = await until(() => cellText(page, 'vehicles', 'demo-van', 2).then((p) => p && p !== '—' && p), 'a demo-van position');
    await until(async () => (await cellText(page, 'vehicles', 'demo-van', 1)) === 'live', 'demo-van live');
    await until(async () => {
      const p = await cellText(page, 'vehicles', 'demo-van', 2);
      return p && p !== pos1;
    }, 'demo-van to move');
    const feedTop = () => page.evaluate(() => Number(document.querySelector('#feed tbody tr')?.dataset.seq ?? 0));
    const top1 = await feedTop();
    await until(async () => (await feedTop()) >= top1 + 5, 'the feed to grow');
    await until(() => page.evaluate(() => document.querySelectorAll('#tracks polyline').length >= 1), 'a track');
    assert.ok(await page.evaluate(() => sessionStorage.getItem('fieldgate.key') === null
      && localStorage.length === 0 && !location.href.includes('fg_')), 'the key is in memory only');
    await page.screenshot({ path: join(OUT, 'dashboard.png'), fullPage: true });

    // Hostile input through the broker: a topic level and payload values carrying markup.
    publish('fleet/<img src=x onerror="window.__pwned=1">/gps9/gps', '{"lat": 1, "lon": 2}');
    publish('fleet/xss-van/gps9/gps', JSON.stringify({
      lat: '<img src=x onerror=window.__pwned=2>', lon: 9.99,
      note: '<script>window.__pwned=3</script><b id="injected">bold</b>',
    }));
    await until(() => page.evaluate(() => [...document.querySelectorAll('#feed tbody td')]
      .some((td) => td.textContent.includes('<img src=x onerror=window.__pwned=2>'))), 'the payload shown as text');
    assert.equal(await cellText(page, 'vehicles', 'xss-van', 2), '—', 'a non-numeric lat is no position');
    await until(async () => {
      const err = await cellText(page, 'sources', 'mqtt', 5);
      return err && err.includes('fleet/<img src=x onerror=');
    }, 'the rejected topic shown as text in the source status');
    assert.equal(await cellText(page, 'sources', 'mqtt', 4), '1', 'one message rejected');
    const injected = await page.evaluate(() => ({
      pwned: window.__pwned, imgs: document.querySelectorAll('img').length,
      bold: document.getElementById('injected'), scripts: document.scripts.length,
    }));
    assert.deepEqual(injected, { pwned: undefined, imgs: 0, bold: null, scripts: 1 });
    const top2 = await feedTop();
    await until(async () => (await feedTop()) >= top2 + 5, 'the page to keep updating');

    // Another origin's page calls the API with the key (CORS preflight for x-api-key).
    const otherPort = await freePort();
    await new Promise((r) => other.listen(otherPort, '127.0.0.1', r));
    const tool = await browser.newPage();
    await tool.goto(`http://127.0.0.1:${otherPort}/`);
    const cross = await tool.evaluate(async ([url, key]) => {
      const r = await fetch(url, { headers: { 'x-api-key': key } });
      return { status: r.status, gateway: (await r.json()).gateway };
    }, [`${base}/api/status`, KEY]);
    assert.deepEqual(cross, { status: 200, gateway: 'demo' });
    await tool.close();

    // Restart the gateway on the same journal: reconnecting, then resumed with no gap.
    await stop(demo.child);
    await until(async () => (await page.textContent('#conn')) === 'reconnecting…', 'the reconnecting badge');
    const beforeRestart = streams.flatMap((s) => s.seqs);
    demo = await startDemo(port, data);
    await until(async () => (await page.textContent('#conn')) === 'live', 'live again');
    const last = beforeRestart[beforeRestart.length - 1];
    await until(() => streams.flatMap((s) => s.seqs).at(-1) >= last + 20, 'frames after the restart');
    const seqs = streams.flatMap((s) => s.seqs);
    assert.ok(streams.filter((s) => s.seqs.length).length >= 2, 'frames came over two connections');
    for (let i = 1; i < seqs.length; i++) {
      assert.equal(seqs[i], seqs[i - 1] + 1, `seq ${seqs[i]} follows ${seqs[i - 1]}: no gap, no duplicate`);
    }
    const rows = await page.evaluate(() => [...document.querySelectorAll('#feed tbody tr')].map((tr) => Number(tr.dataset.seq)));
    for (let i = 1; i < rows.length; i++) assert.equal(rows[i], rows[i - 1] - 1, 'the feed shows every seq once');
    assert.match(await page.textContent('#journal'), /gaps 0/);
    await page.screenshot({ path: join(OUT, 'dashboard-resumed.png'), fullPage: true });
    assert.deepEqual(problems, [], 'no script errors, no CSP violations');
  } finally {
    other.close();
    await browser.close();
    await stop(demo.child);
  }
});
