// fieldgate WebSocket client, in the spirit of the original seed client.
//
//   import { clientSocket, TMD } from './fieldgate.mjs';
//   const ws = clientSocket('tech-laptop', { url: 'ws://gateway:3004', key: process.env.FIELDGATE_API_KEY });
//   ws.on('message', (raw) => { const m = JSON.parse(raw); if (m.type === 'frame') console.log(m.data); });
//   ws.on('open', () => ws.send(JSON.stringify(TMD({ type: 'subscribe', data: { vehicles: ['van-07'] } }))));
//
// Messages are TMD envelopes {type, message, data}. Server → client: welcome, frame,
// subscribed, lagged, error, pong, broadcast. Client → server: subscribe, unsubscribe,
// ping, broadcast (scope publish), command (scope control).
import WebSocket from 'ws';

/** The message envelope: {type, message, data}. */
export function TMD({ type, message = '', data = null } = {}) {
  if (typeof type !== 'string' || type === '') throw new TypeError('TMD needs a type');
  return { type, message, data };
}

/** A WebSocket to the gateway: the client name as subprotocol, the key in a header. */
export function clientSocket(client, { url = 'ws://127.0.0.1:3004', key = process.env.FIELDGATE_API_KEY } = {}) {
  return new WebSocket(url, [client], { headers: { 'x-api-key': key ?? '' } });
}

/**
 * A self-healing subscription: reconnects with exponential backoff and resumes from the
 * last seq it saw (`from_seq`), so a dropped link costs no frames and no duplicates.
 * Returns { close(), lastSeq() }.
 */
export function reconnectingSocket(client, { url, key, filters = {}, fromSeq, minDelayMs = 200, maxDelayMs = 10000,
  onFrame = () => {}, onMessage = () => {}, onState = () => {} } = {}) {
  let last = fromSeq ? fromSeq - 1 : undefined;
  let delay = minDelayMs;
  let ws;
  let stopped = false;
  let timer;
  const connect = () => {
    ws = clientSocket(client, { url, key });
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
