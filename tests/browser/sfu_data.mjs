// Test 6: data. Three demo pages (no media). `ann` sends with sendData:
// a text to everyone, bytes to everyone, a text only to ben, then a marker
// to everyone. Messages from one sender arrive in order, so once cat has the
// marker she would have had the one meant for ben, had it reached her.
//
// Config: {base, room, timeoutMs}
import { cfg, main, newPage, openDemo, pollUntil } from './sfu_common.mjs';

const names = ['ann', 'ben', 'cat'];

await main(async (browser) => {
  const timeoutMs = cfg.timeoutMs ?? 15000;
  const pages = await Promise.all(names.map((n) => newPage(browser, n)));
  await Promise.all(pages.map((p, i) => openDemo(p, { room: cfg.room, identity: names[i], camera: 0, mic: 0 })));
  for (const p of pages) {
    await p.evaluate(() => {
      window.received = [];
      window.rtcDemo.room.on('dataReceived', (bytes, participant, info) => {
        window.received.push({ from: participant?.identity ?? null, identity: info.identity, topic: info.topic, text: new TextDecoder().decode(bytes), bytes: [...bytes] });
      });
    });
  }
  // Everyone sees everyone before sending.
  await pollUntil('all three pages seeing each other', () => Promise.all(pages.map((p) => p.evaluate(() => window.rtcDemo.room.participants.size))),
    (s) => s.every((n) => n === 2), { timeoutMs });
  await pages[0].evaluate(async () => {
    const room = window.rtcDemo.room;
    await room.sendData('hello everyone', { topic: 'chat' });
    await room.sendData(new Uint8Array([0, 1, 254, 255]), { topic: 'bin' });
    await room.sendData('only for ben', { topic: 'chat', destinationIdentities: ['ben'] });
    await room.sendData('marker', { topic: 'end' });
  });
  const received = () => Promise.all(pages.map((p) => p.evaluate(() => window.received)));
  const got = await pollUntil('ben and cat receiving the marker', received,
    (r) => [1, 2].every((i) => r[i].some((m) => m.text === 'marker')), { timeoutMs, every: 100 });
  // ann's own messages do not come back to her; give the server the same
  // chance: her page also received nothing by the time the others had the marker.
  return { received: Object.fromEntries(names.map((n, i) => [n, got[i]])) };
});
