// fieldgate WebSocket client, in the spirit of the original seed client.
//
//   import { clientSocket, TMD } from './fieldgate.mjs';
//   const ws = clientSocket('tech-laptop', { url: 'ws://gateway:3004', key: process.env.FIELDGATE_API_KEY });
//   // A board with `[listen] tls_cert`: trust its certificate by fingerprint (as `fieldgate tls
//   // self-signed` printed it) or as a CA file; the key is sent only after that check.
//   const wss = clientSocket('tech-laptop', { url: 'wss://gateway:3004', key, fingerprint: 'AB:CD:...' });
//   ws.on('message', (raw) => { const m = JSON.parse(raw); if (m.type === 'frame') console.log(m.data); });
//   ws.on('open', () => ws.send(JSON.stringify(TMD({ type: 'subscribe', data: { vehicles: ['van-07'] } }))));
//
// Messages are TMD envelopes {type, message, data}. Server → client: welcome, frame,
// subscribed, lagged, error, pong, broadcast. Client → server: subscribe, unsubscribe,
// ping, broadcast (scope publish), command (scope control).
import WebSocket from 'ws';
import net from 'node:net';
import tls from 'node:tls';

/** The message envelope: {type, message, data}. */
export function TMD({ type, message = '', data = null } = {}) {
  if (typeof type !== 'string' || type === '') throw new TypeError('TMD needs a type');
  return { type, message, data };
}

/** `AB:CD:...` from a SHA-256 fingerprint in any usual spelling (colons, case, `sha256:`). */
function normalizeFingerprint(fp) {
  const hex = String(fp).trim().replace(/^sha256:/i, '').replace(/:/g, '').toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) throw new TypeError(`not a SHA-256 fingerprint: ${fp}`);
  return hex.match(/../g).join(':');
}

/**
 * TLS options for `wss://`: `ca` (PEM of the CA or of the board's own certificate) uses
 * Node's normal verification; `fingerprint` accepts exactly the certificate with that
 * SHA-256 fingerprint, checked before the request (and so the key) is written.
 */
function tlsOptions({ ca, fingerprint } = {}) {
  if (ca) return { ca };
  if (!fingerprint) return {};
  const want = normalizeFingerprint(fingerprint);
  return {
    createConnection(options, done) {
      const servername = options.servername ?? (net.isIP(options.host) ? undefined : options.host);
      const socket = tls.connect({ ...options, path: undefined, servername, rejectUnauthorized: false });
      socket.once('secureConnect', () => {
        const got = socket.getPeerCertificate().fingerprint256;
        if (got === want) {
          done(null, socket);
        } else {
          socket.destroy();
          done(new Error(`gateway certificate fingerprint ${got} is not the pinned ${want}`));
        }
      });
      socket.once('error', (e) => done(e));
    },
  };
}

/**
 * A WebSocket to the gateway: the client name as subprotocol, the key in a header.
 * For `wss://`, `ca` or `fingerprint` say which certificate to trust (default: the system CAs).
 */
export function clientSocket(client, { url = 'ws://127.0.0.1:3004', key = process.env.FIELDGATE_API_KEY, ca, fingerprint } = {}) {
  return new WebSocket(url, [client], { headers: { 'x-api-key': key ?? '' }, ...tlsOptions({ ca, fingerprint }) });
}

/**
 * A self-healing subscription: reconnects with exponential backoff and resumes from the
 * last seq it saw (`from_seq`), so a dropped link costs no frames and no duplicates.
 * Returns { close(), lastSeq() }.
 */
export function reconnectingSocket(client, { url, key, ca, fingerprint, filters = {}, fromSeq, minDelayMs = 200,
  maxDelayMs = 10000, onFrame = () => {}, onMessage = () => {}, onState = () => {} } = {}) {
  let last = fromSeq ? fromSeq - 1 : undefined;
  let delay = minDelayMs;
  let ws;
  let stopped = false;
  let timer;
  const connect = () => {
    ws = clientSocket(client, { url, key, ca, fingerprint });
    ws.on('open', () => {
      delay = minDelayMs;
      onState('open');
      const data = { ...filters };
      if (last !== undefined) data.from_seq = last + 1;
      ws.send(JSON.stringify(TMD({ type: 'subscribe', data })));
    });
    ws.on('message', (raw) => {
      let m;
      try { m = JSON.parse(raw); } catch { return; }
      if (m.type === 'frame') {
        if (last !== undefined && m.data.seq <= last) return;
        last = m.data.seq;
        onFrame(m.data);
      } else {
        onMessage(m);
      }
    });
    const retry = () => {
      if (stopped) return;
      onState('closed');
      clearTimeout(timer);
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, maxDelayMs);
    };
    ws.on('close', retry);
    ws.on('error', () => {}); // 'close' follows and schedules the retry
  };
  connect();
  return {
    close() { stopped = true; clearTimeout(timer); ws?.close(); },
    lastSeq() { return last; },
  };
}
