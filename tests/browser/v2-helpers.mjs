// Helpers for the version 2 browser tests: message lookup, the message menu, a tiny
// PNG, and screenshots saved under tests/browser/screenshots/ (gitignored).
import { mkdirSync } from 'node:fs';
import { deflateSync } from 'node:zlib';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { T } from './helpers.mjs';

export const SCREENSHOTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'screenshots');
export const SCREEN_DESKTOP = { width: 1280, height: 800 };
export const SCREEN_PHONE = { width: 390, height: 844 };

// The message of the open conversation whose body (or, with testid, whose part) has this text.
export function message(page, text, testid = 'msg-body') {
  return page.getByTestId('message').filter({ has: page.getByTestId(testid).getByText(text, { exact: true }) });
}

// Open a message's menu (hover shows its button) and pick an item; for reactions, the emoji.
export async function menuAction(page, msg, testid, emoji) {
  await msg.hover();
  await msg.getByTestId('msg-menu-button').click({ timeout: T });
  const menu = page.getByTestId('msg-menu');
  await menu.waitFor({ timeout: T });
  const item = emoji ? menu.locator(`[data-testid="${testid}"][data-emoji="${emoji}"]`) : menu.getByTestId(testid);
  await item.click({ timeout: T });
}

// A valid PNG of w x h pixels (a colour gradient), built here so no binary sits in the tree.
export function png(w = 48, h = 32) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0; // filter: none
    for (let x = 0; x < w; x++) {
      const o = y * (w * 3 + 1) + 1 + x * 3;
      raw[o] = 80 + Math.round((x / w) * 160);
      raw[o + 1] = 70;
      raw[o + 2] = 230 - Math.round((y / h) * 120);
    }
  }
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.emulateMedia({ reducedMotion: 'reduce' });
  await page.screenshot({ path: path.join(SCREENSHOTS, name), fullPage: false, animations: 'disabled' });
  await page.emulateMedia({ reducedMotion: null });
}
