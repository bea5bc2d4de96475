// fieldgate dashboard. Served by the gateway under a strict Content-Security-Policy.
//
// Rules this file keeps: no HTML is ever built from data (DOM nodes and textContent only;
// attributes only from numbers or constants); numbers go through num() with a fallback;
// the key lives in memory, or in this tab's sessionStorage if asked, never in a URL the
// page shows. The live feed is resumed after a drop from the last seq seen, so nothing is
// missed or shown twice.
'use strict';

const KEY_STORE = 'fieldgate.key';
const FEED_KEEP = 2000;      // frames kept for the feed (filters pick from these)
const FEED_ROWS = 200;       // rows shown
const TRACK_POINTS = 600;    // positions kept per vehicle
const MAX_VEHICLES = 200;
const MAX_DEVICES = 500;
const MAX_CAN_SIGNALS = 200;
const STALE_MS = 15000;      // no frame heard for this long: stale
const HISTORY_MS = 600000;   // chart window
const STATUS_EVERY_MS = 3000;
const BACKFILL = 1500;       // frames replayed on first connect (tracks, feed)
const RESUME_MAX = 20000;    // a longer outage resumes at the newest frames, and says so
const RETRY_MAX_MS = 5000;

const $ = (id) => document.getElementById(id);

const st = {
  key: null,
  ws: null,
  gen: 0,               // bumped by disconnect(): work begun before it is abandoned
  stopped: true,
  retryMs: 250,
  retryTimer: null,
  statusTimer: null,
  subscribed: false,
  liveFrom: Infinity,   // seqs above this arrived live (not replayed)
  lastSeq: null,
  gaps: 0,
  paused: false,
  vehicles: new Map(),
  devices: new Map(),
  can: new Map(),       // "message.signal" → [value, unit, vehicle or device]
  feed: [],
  history: [],
  status: null,
  dirty: false,
};

// ---- small helpers ---------------------------------------------------------------------

/** A finite number from a JSON value, or null (strings like "<img ...>" give null). */
function num(v) {
  if (typeof v !== 'number' && (typeof v !== 'string' || v.trim() === '')) return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

/** Text for a value: the string itself, or a fallback. */
function text(v, fallback = '—') {
  if (v === null || v === undefined || v === '') return fallback;
  return String(v);
}

function fixed(v, digits) {
  const n = num(v);
  return n === null ? '—' : n.toFixed(digits);
}

/** An element with a class and text/element children (strings become text nodes). */
function el(tag, cls, ...children) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(text(c, '')));
  return e;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.append(c instanceof Node && c.nodeName === 'TD' ? c : el('td', '', c));
  return tr;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function clock(ms) {
  const n = num(ms);
  return n === null ? '—' : new Date(n).toLocaleTimeString();
}

function ago(ms) {
  if (ms === null) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

function show(id, message) {
  const e = $(id);
  e.textContent = message || '';
  e.hidden = !message;
}

function setConn(word, cls) {
  const e = $('conn');
  e.textContent = word;
  e.className = `badge ${cls}`;
}

/** Render soon: at most five times a second, however fast frames come. */
function markDirty() {
  if (st.dirty) return;
  st.dirty = true;
  setTimeout(render, 200);
}

/** Drop the oldest entries of a Map (insertion order is refreshed on update). */
function bound(map, max) {
  while (map.size > max) map.delete(map.keys().next().value);
}

// ---- the key and the connection --------------------------------------------------------

function headers() {
  return { 'x-api-key': st.key };
}

/** Checks the key with /api/user; returns null when usable, else the message to show. */
async function checkKey() {
  let r;
  try {
    r = await fetch('/api/user', { headers: headers(), cache: 'no-store' });
  } catch {
    return { retry: true, message: 'Cannot reach the gateway.' };
  }
  if (r.status === 401) return { message: 'The gateway does not accept this API key. Check it and try again.' };
  if (r.status === 429) return { message: 'Too many wrong keys from this address: the gateway refuses them for a minute.' };
  if (!r.ok) return { retry: true, message: `The gateway answered ${r.status}.` };
  let user;
  try { user = await r.json(); } catch { return { retry: true, message: 'The gateway sent a bad answer.' }; }
  const scopes = Array.isArray(user.scopes) ? user.scopes : [];
  if (!scopes.includes('read') && !scopes.includes('admin')) {
    return { message: 'This key has no read scope: it cannot watch the gateway.' };
  }
  return null;
}

async function connect(key) {
  disconnect();
  const gen = st.gen;
  st.key = key;
  st.stopped = false;
  show('error', '');
  setConn('connecting…', 'wait');
  const bad = await checkKey();
  if (gen !== st.gen) return; // superseded
  if (bad && !bad.retry) {
    st.stopped = true;
    st.key = null;
    setConn('not connected', 'off');
    show('error', bad.message);
    return;
  }
  pollStatus();
  st.statusTimer = setInterval(pollStatus, STATUS_EVERY_MS);
  if (bad) scheduleRetry(bad.message); else openSocket();
}

function disconnect() {
  st.gen += 1;
  st.stopped = true;
  clearTimeout(st.retryTimer);
  clearInterval(st.statusTimer);
  if (st.ws) { st.ws.onclose = null; st.ws.close(); st.ws = null; }
}

function openSocket() {
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  // Browsers cannot set headers on a WebSocket: the key goes in the socket's query only.
  const ws = new WebSocket(`${proto}://${location.host}/ws?api_key=${encodeURIComponent(st.key)}`, ['dashboard']);
  st.ws = ws;
  st.subscribed = false;
  ws.onmessage = (ev) => onMessage(ws, ev);
  ws.onclose = () => {
    if (st.ws !== ws) return;
    st.ws = null;
    if (!st.stopped) scheduleRetry();
  };
}

function scheduleRetry(why) {
  setConn('reconnecting…', 'wait');
  if (why) show('note', why);
  clearTimeout(st.retryTimer);
  const gen = st.gen;
  st.retryTimer = setTimeout(async () => {
    if (gen !== st.gen) return;
    const bad = await checkKey();
    if (gen !== st.gen) return;
    if (bad && !bad.retry) {
      disconnect();
      setConn('not connected', 'off');
      show('error', bad.message);
      return;
    }
    if (bad) { scheduleRetry(bad.message); return; }
    openSocket();
  }, st.retryMs);
  st.retryMs = Math.min(st.retryMs * 2, RETRY_MAX_MS);
}

function onMessage(ws, ev) {
  let m;
  try { m = JSON.parse(ev.data); } catch { return; }
  if (!m || typeof m !== 'object') return;
  switch (m.type) {
    case 'welcome': onWelcome(ws, m.data || {}); break;
    case 'subscribed':
      st.subscribed = true;
      pollStatus();
      st.retryMs = 250;
      setConn('live', 'live');
      show('note', '');
      break;
    case 'frame':
      // Frames before `subscribed` are the protocol's default stream, not ours.
      if (st.subscribed && m.data && typeof m.data === 'object') onFrame(m.data);
      break;
    case 'lagged':
      show('note', `The gateway dropped ${text(num(m.data && m.data.dropped), 'some')} frames for this page (it fell behind).`);
      break;
    case 'error':
      show('note', `Gateway: ${text(m.message)}`);
      break;
    default:
  }
}

function onWelcome(ws, w) {
  $('gateway').textContent = text(w.gateway, '');
  const last = num(w.last_seq) ?? 0;
  st.liveFrom = last;
  let from;
  if (st.lastSeq === null) {
    from = Math.max(1, last - BACKFILL + 1);
  } else if (last - st.lastSeq > RESUME_MAX) {
    from = Math.max(1, last - BACKFILL + 1);
    show('note', `Skipped ${from - st.lastSeq - 1} frames journaled while this page was disconnected (see /api/frames for them).`);
    st.lastSeq = from - 1;
  } else {
    from = st.lastSeq + 1;
  }
  ws.send(JSON.stringify({ type: 'subscribe', message: '', data: { from_seq: from } }));
}

// ---- frames into state -----------------------------------------------------------------

function onFrame(f) {
  const seq = num(f.seq);
  if (seq === null) return;
  if (st.lastSeq !== null) {
    if (seq <= st.lastSeq) return;                 // already shown
    if (seq !== st.lastSeq + 1) st.gaps += 1;      // never expected: counted, shown
  }
  st.lastSeq = seq;
  const live = seq > st.liveFrom;
  const ts = num(f.ts_ms);
  const device = text(f.device, '?');
  const vehicle = typeof f.vehicle === 'string' ? f.vehicle : null;
  const kind = text(f.kind, '?');
  const p = f.payload && typeof f.payload === 'object' && !Array.isArray(f.payload) ? f.payload : {};

  const d = st.devices.get(device) || { id: device, frames: 0 };
  st.devices.delete(device);
  Object.assign(d, { vehicle, kind, source: text(f.source, ''), ts, frames: d.frames + 1 });
  st.devices.set(device, d);
  bound(st.devices, MAX_DEVICES);

  if (vehicle !== null) {
    const v = st.vehicles.get(vehicle) || { id: vehicle, track: [], codes: null, heard: null };
    st.vehicles.delete(vehicle);
    st.vehicles.set(vehicle, v);
    bound(st.vehicles, MAX_VEHICLES);
    const lat = num(p.lat);
    const lon = num(p.lon);
    if (lat !== null && lon !== null && Math.abs(lat) <= 90 && Math.abs(lon) <= 180) {
      v.lat = lat;
      v.lon = lon;
      v.track.push([lat, lon]);
      if (v.track.length > TRACK_POINTS) v.track.splice(0, v.track.length - TRACK_POINTS);
    }
    for (const [k, field] of [['speed', 'speed_kmh'], ['rpm', 'rpm'], ['coolant', 'coolant_c']]) {
      const n = num(p[field]);
      if (n !== null) v[k] = n;
    }
    if (kind === 'dtc') {
      v.codes = Array.isArray(p.codes) ? p.codes.filter((c) => typeof c === 'string').slice(0, 20) : [];
    }
    if (ts !== null) v.ts = Math.max(v.ts ?? 0, ts);
    if (live) v.heard = Date.now();
  }

  if (kind === 'can' && p.signals && typeof p.signals === 'object') {
    const units = p.units && typeof p.units === 'object' ? p.units : {};
    for (const [k, v] of Object.entries(p.signals)) {
      const name = `${text(p.message, '?')}.${k}`;
      if (!st.can.has(name) && st.can.size >= MAX_CAN_SIGNALS) continue;
      st.can.set(name, [text(v), text(units[k], ''), vehicle ?? device]);
    }
  }

  let payload;
  try { payload = JSON.stringify(f.payload); } catch { payload = ''; }
  st.feed.push({ seq, ts, vehicle, device, kind, payload: text(payload, '').slice(0, 240) });
  if (st.feed.length > FEED_KEEP) st.feed.splice(0, st.feed.length - FEED_KEEP);
  markDirty();
}

// ---- status polling --------------------------------------------------------------------

async function pollStatus() {
  if (!st.key) return;
  let s;
  try {
    const r = await fetch('/api/status', { headers: headers(), cache: 'no-store' });
    if (!r.ok) return;
    s = await r.json();
  } catch {
    return;
  }
  st.status = s;
  const j = s.journal || {};
  const mongo = s.sinks && typeof s.sinks === 'object' ? s.sinks.mongo : null;
  st.history.push({ t: Date.now(), seq: num(j.last_seq), lag: mongo ? num(mongo.lag) : null });
  while (st.history.length && st.history[0].t < Date.now() - HISTORY_MS) st.history.shift();
  markDirty();
}

// ---- rendering -------------------------------------------------------------------------

function render() {
  st.dirty = false;
  renderVehicles();
  renderTracks();
  renderDevices();
  renderStatus();
  renderCan();
  renderFeed();
}

function renderCan() {
  const sources = st.status && st.status.sources && typeof st.status.sources === 'object' ? st.status.sources : {};
  const buses = Object.entries(sources).filter(([, s]) => s && s.kind === 'can');
  $('can-card').hidden = st.can.size === 0 && buses.length === 0;
  replaceRows($('can-buses'), buses.map(([name, s]) => {
    const d = s.detail && typeof s.detail === 'object' ? s.detail : {};
    const ids = Array.isArray(d.unknown_ids) ? d.unknown_ids.slice(0, 5) : [];
    const top = ids.map((u) => `${text(u && u.id, '?')} ×${text(num(u && u.frames), '?')}`).join(', ');
    const state = text(s.state);
    const cls = state === 'running' ? 'live' : state === 'stopped' ? 'bad' : 'wait';
    return row([name, el('td', '', el('span', `badge ${cls}`, state)), text(num(d.decoded), '0'),
      text(num(d.unknown_frames), '0'), text(top), text(s.last_error)]);
  }));
  const rows = [...st.can.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, cells]) => row([name, ...cells]));
  replaceRows($('can'), rows);
}

function replaceRows(table, rows) {
  table.tBodies[0].replaceChildren(...rows);
}

function renderVehicles() {
  const rows = [];
  for (const v of [...st.vehicles.values()].sort((a, b) => a.id.localeCompare(b.id))) {
    const live = v.heard !== null && Date.now() - v.heard < STALE_MS;
    const badge = el('span', `badge ${live ? 'live' : 'stale'}`, live ? 'live' : 'stale');
    const pos = v.lat === undefined ? '—' : `${fixed(v.lat, 5)}, ${fixed(v.lon, 5)}`;
    const codes = v.codes === null ? '—' : v.codes.length ? v.codes.join(' ') : 'none';
    const codesCell = el('td', v.codes && v.codes.length ? 'codes' : '', codes);
    rows.push(row([v.id, el('td', '', badge), pos, fixed(v.speed, 0), fixed(v.rpm, 0),
      fixed(v.coolant, 1), `${clock(v.ts)} (${ago(v.heard)})`, codesCell]));
  }
  if (!rows.length) rows.push(row(['no vehicles yet']));
  replaceRows($('vehicles'), rows);
}

function renderTracks() {
  const box = $('tracks');
  const W = 400, H = 260, PAD = 18;
  const tracks = [...st.vehicles.values()].filter((v) => v.track.length);
  if (!tracks.length) {
    const t = svg('text', { x: 12, y: 24, class: 'empty' });
    t.textContent = 'no positions yet';
    box.replaceChildren(t);
    return;
  }
  let [minLat, maxLat, minLon, maxLon] = [90, -90, 180, -180];
  for (const v of tracks) for (const [la, lo] of v.track) {
    minLat = Math.min(minLat, la); maxLat = Math.max(maxLat, la);
    minLon = Math.min(minLon, lo); maxLon = Math.max(maxLon, lo);
  }
  // Equirectangular around the middle latitude: good enough for a few kilometres.
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * k, 1e-4);
  const spanY = Math.max(maxLat - minLat, 1e-4);
  const scale = Math.min((W - 2 * PAD) / spanX, (H - 2 * PAD) / spanY);
  const x = (lo) => PAD + (lo - minLon) * k * scale;
  const y = (la) => H - PAD - (la - minLat) * scale;
  const nodes = [];
  tracks.forEach((v, i) => {
    const pts = v.track.map(([la, lo]) => `${x(lo).toFixed(1)},${y(la).toFixed(1)}`).join(' ');
    nodes.push(svg('polyline', { points: pts, class: `track c${i % 5}` }));
    const [la, lo] = v.track[v.track.length - 1];
    nodes.push(svg('circle', { cx: x(lo).toFixed(1), cy: y(la).toFixed(1), r: 4, class: 'dot' }));
    const label = svg('text', { x: (x(lo) + 6).toFixed(1), y: (y(la) - 6).toFixed(1), class: 'label' });
    label.textContent = v.id;
    nodes.push(label);
  });
  box.replaceChildren(...nodes);
}

function renderDevices() {
  const rows = [];
  for (const d of [...st.devices.values()].sort((a, b) => a.id.localeCompare(b.id))) {
    rows.push(row([d.id, text(d.vehicle), d.kind, text(d.source), String(d.frames), clock(d.ts)]));
  }
  if (!rows.length) rows.push(row(['no devices yet']));
  replaceRows($('devices'), rows);

  const sources = st.status && st.status.sources && typeof st.status.sources === 'object' ? st.status.sources : {};
  const srows = Object.entries(sources).map(([name, s]) => {
    const state = text(s && s.state);
    const cls = state === 'running' ? 'live' : state === 'stopped' ? 'bad' : 'wait';
    const rejected = el('td', '', text(num(s && s.invalid), '0'));
    const by = s && s.invalid_by_reason && typeof s.invalid_by_reason === 'object' ? s.invalid_by_reason : {};
    const reasons = Object.entries(by).map(([r, n]) => `${r}: ${text(num(n), '?')}`).join(', ');
    if (reasons) rejected.title = reasons;
    return row([name, text(s && s.kind), el('td', '', el('span', `badge ${cls}`, state)),
      text(num(s && s.frames), '0'), rejected, text(s && s.last_error)]);
  });
  replaceRows($('sources'), srows.length ? srows : [row(['—'])]);
}

function chart(svgEl, values) {
  const pts = values.filter((p) => p.v !== null);
  if (pts.length < 2) { svgEl.replaceChildren(); return; }
  const t0 = Date.now() - HISTORY_MS;
  const max = Math.max(1, ...pts.map((p) => p.v));
  const line = pts.map((p) => `${(((p.t - t0) / HISTORY_MS) * 300).toFixed(1)},${(58 - (p.v / max) * 54).toFixed(1)}`).join(' ');
  svgEl.replaceChildren(svg('polyline', { points: line }));
}

function renderStatus() {
  const s = st.status;
  if (!s) return;
  const j = s.journal || {};
  const rows = [
    row(['frames stored', text(num(j.frames))]),
    row(['seq range', `${text(num(j.first_seq))} … ${text(num(j.last_seq))}`]),
    row(['bytes', text(num(j.bytes))]),
    row(['evicted (byte cap)', text(num(j.evicted), '0')]),
    row(['shown here', `last seq ${text(st.lastSeq)}, gaps ${st.gaps}`]),
  ];
  const sinks = s.sinks && typeof s.sinks === 'object' ? s.sinks : {};
  for (const [name, k] of Object.entries(sinks)) {
    rows.push(row([`${name} sync`, `${text(k && k.state)}, acked ${text(num(k && k.acked_seq))}, lag ${text(num(k && k.lag))} frames / ${fixed(k && k.lag_seconds, 0)} s`]));
    if (k && k.last_error) rows.push(row([`${name} last error`, text(k.last_error)]));
  }
  if (!Object.keys(sinks).length) rows.push(row(['sync', 'no sink configured']));
  replaceRows($('journal'), rows);

  const rate = [];
  for (let i = 1; i < st.history.length; i++) {
    const a = st.history[i - 1], b = st.history[i];
    const v = a.seq !== null && b.seq !== null && b.t > a.t ? Math.max(0, (b.seq - a.seq) / ((b.t - a.t) / 1000)) : null;
    rate.push({ t: b.t, v });
  }
  chart($('chart-rate'), rate);
  chart($('chart-lag'), st.history.map((h) => ({ t: h.t, v: h.lag })));
  const lastRate = rate.length ? rate[rate.length - 1].v : null;
  $('rate-now').textContent = lastRate === null ? '' : lastRate.toFixed(1);
  const lastLag = st.history.length ? st.history[st.history.length - 1].lag : null;
  $('lag-now').textContent = lastLag === null ? '(no sink)' : String(lastLag);
}

function renderFeed() {
  $('feed-count').textContent = st.paused ? '(paused)' : '';
  if (st.paused) return;
  const want = (v, f) => !f || (typeof v === 'string' && v.includes(f));
  const fd = $('f-device').value.trim(), fv = $('f-vehicle').value.trim(), fk = $('f-kind').value.trim();
  const rows = [];
  for (let i = st.feed.length - 1; i >= 0 && rows.length < FEED_ROWS; i--) {
    const f = st.feed[i];
    if (!want(f.device, fd) || !want(f.vehicle, fv) || !want(f.kind, fk)) continue;
    const tr = row([String(f.seq), clock(f.ts), text(f.vehicle), f.device, f.kind, f.payload]);
    tr.dataset.seq = String(f.seq);
    rows.push(tr);
  }
  replaceRows($('feed'), rows);
}

// ---- wiring ----------------------------------------------------------------------------

function start() {
  // A key in the page address would end up in history, bookmarks and logs: never read it.
  const params = new URLSearchParams(location.search);
  if (params.has('api_key')) {
    history.replaceState(null, '', location.pathname);
    show('note', 'A key in the page address is ignored (and was removed from it): paste it in the key field.');
  }
  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const key = $('key').value.trim();
    if (!key) { show('error', 'Paste an API key first.'); return; }
    if ($('remember').checked) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
    $('key').value = '';
    connect(key);
  });
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_STORE);
    disconnect();
    st.key = null;
    $('key').value = '';
    setConn('not connected', 'off');
  });
  $('pause').addEventListener('click', () => {
    st.paused = !st.paused;
    $('pause').textContent = st.paused ? 'Resume' : 'Pause';
    markDirty();
  });
  for (const id of ['f-device', 'f-vehicle', 'f-kind']) $(id).addEventListener('input', markDirty);
  setInterval(markDirty, 1000); // badges and "ago" texts age
  const saved = sessionStorage.getItem(KEY_STORE);
  if (saved) { $('remember').checked = true; connect(saved); }
  render();
}

document.addEventListener('DOMContentLoaded', start);
