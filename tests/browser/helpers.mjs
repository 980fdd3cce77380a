// Shared setup for the browser tests: a real server from the harness (binary from
// $PARLEYD, which serves web/ at /), Debian's Chromium driven by playwright-core,
// and small UI helpers that only use data-testid / labels and auto-waiting.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { start } from '../lib/server.mjs';

export const ARTIFACTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'artifacts');
export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 780 };
export const T = 10000; // default wait

let n = 0;
export function uname(prefix) {
  return `${prefix}_${process.pid.toString(36)}${Date.now().toString(36).slice(-5)}${(n++).toString(36)}`;
}

export async function launch(serverOpts = {}) {
  const srv = await start(serverOpts);
  try {
    const res = await fetch(`${srv.url}/`);
    const type = res.headers.get('content-type') || '';
    const text = await res.text();
    if (res.status !== 200 || !type.includes('text/html') || !text.includes('app.js')) {
      throw new Error(`the server under test (${process.env.PARLEYD || 'build/release/parleyd'}) does not serve web/index.html at / ` +
        `(status ${res.status}, content-type "${type}")`);
    }
  } catch (e) {
    await srv.stop();
    throw e;
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  mkdirSync(ARTIFACTS, { recursive: true });
  const contexts = [];
  return {
    srv,
    browser,
    // A new browser context (its own cookies, storage and network) with one page.
    async open({ viewport = DESKTOP } = {}) {
      const ctx = await browser.newContext({ viewport, baseURL: srv.url });
      contexts.push(ctx);
      ctx.setDefaultTimeout(T);
      const page = await ctx.newPage();
      const user = { ctx, page, dialogs: [], errors: [] };
      page.on('dialog', (d) => { user.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
      page.on('pageerror', (e) => user.errors.push(e.message));
      page.on('console', (m) => { if (m.type() === 'error') user.errors.push(m.text()); });
      return user;
    },
    async close() {
      for (const c of contexts) await c.close().catch(() => {});
      await browser.close().catch(() => {});
      await srv.stop();
    },
  };
}

// Sign up through the UI; resolves when the main screen shows.
export async function signup(env, prefix, { viewport, display } = {}) {
  const u = await env.open({ viewport });
  u.username = uname(prefix);
  u.display = display || prefix[0].toUpperCase() + prefix.slice(1);
  const { page } = u;
  await page.goto('/');
  await page.getByTestId('tab-signup').click();
  await page.getByLabel('Username').fill(u.username);
  await page.getByLabel(/Display name/).fill(u.display);
  await page.getByLabel('Password').fill('correct-horse-1');
  await page.getByTestId('auth-submit').click();
  await page.getByTestId('main-screen').waitFor({ timeout: T });
  await page.getByTestId('me-name').filter({ hasText: u.display }).waitFor({ timeout: T });
  await online(page);
  return u;
}

// A user created over HTTP whose page starts already logged in (the stored session
// is what the app keeps in localStorage): faster than the form, same app path as a reload.
export async function quickUser(env, prefix, { viewport, display } = {}) {
  const u = await env.open({ viewport });
  u.username = uname(prefix);
  u.display = display || prefix[0].toUpperCase() + prefix.slice(1);
  const res = await fetch(`${env.srv.url}/api/auth/signup`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: u.username, password: 'correct-horse-1', display_name: u.display }),
  });
  if (res.status !== 201) throw new Error(`signup ${u.username}: HTTP ${res.status}`);
  const s = await res.json();
  const session = { user: s.user, access_token: s.access_token, refresh_token: s.refresh_token, expires_at: Date.now() + (s.expires_in - 1) * 1000, lifetime: (s.expires_in - 1) * 1000 };
  await u.ctx.addInitScript((json) => {
    if (localStorage.getItem('parley.test.seeded')) return; // only the very first page load
    localStorage.setItem('parley.test.seeded', '1');
    localStorage.setItem('parley.session', json);
  }, JSON.stringify(session));
  await u.page.goto('/');
  await u.page.getByTestId('me-name').filter({ hasText: u.display }).waitFor({ timeout: T });
  await online(u.page);
  return u;
}

export async function online(page) {
  await page.waitForFunction(() => window.parley && window.parley.state === 'online', null, { timeout: T });
}

// Start (or reopen) a direct conversation by searching for a user.
export async function startDirect(u, other) {
  const { page } = u;
  await page.getByTestId('people-search').fill(other.username);
  await page.getByTestId('people-results').locator(`[data-testid="user-result"][data-username="${other.username}"]`).click({ timeout: T });
  await page.getByTestId('pane-title').filter({ hasText: other.display }).waitFor({ timeout: T });
}

export function convItem(page, title) {
  return page.getByTestId('conv-item').filter({ has: page.getByTestId('conv-title').getByText(title, { exact: true }) });
}

export async function openConv(u, title) {
  await convItem(u.page, title).click({ timeout: T });
  await u.page.getByTestId('pane-title').filter({ hasText: title }).waitFor({ timeout: T });
}

export async function send(u, text) {
  const box = u.page.getByTestId('composer');
  await box.fill(text);
  await box.press('Enter');
}

// The message bodies in the open conversation, in display order.
export function bodies(page) {
  return page.$$eval('[data-testid="message"] [data-testid="msg-body"]', (els) => els.map((e) => e.textContent));
}

// Wait until the open conversation shows exactly these bodies (in this order).
export async function waitBodies(page, want, timeout = T) {
  try {
    await page.waitForFunction((w) => {
      const got = [...document.querySelectorAll('[data-testid="message"] [data-testid="msg-body"]')].map((e) => e.textContent);
      return JSON.stringify(got) === JSON.stringify(w);
    }, want, { timeout });
  } catch (e) {
    throw new Error(`messages: wanted ${JSON.stringify(want)}, got ${JSON.stringify(await bodies(page))}`);
  }
}

export async function waitUnread(page, title, count, timeout = T) {
  const item = convItem(page, title);
  try {
    await item.waitFor({ timeout });
    await page.waitForFunction(([t, c]) => {
      for (const b of document.querySelectorAll('[data-testid="conv-item"]')) {
        if (b.querySelector('[data-testid="conv-title"]').textContent !== t) continue;
        const badge = b.querySelector('[data-testid="unread-badge"]');
        return c === 0 ? badge.hidden : !badge.hidden && badge.textContent === String(c);
      }
      return false;
    }, [title, count], { timeout });
  } catch (e) {
    const got = await item.getByTestId('unread-badge').evaluate((b) => (b.hidden ? 0 : b.textContent)).catch(() => 'missing');
    throw new Error(`unread badge of "${title}": wanted ${count}, got ${got}`);
  }
}

// Screenshots show the settled page: with reduced motion the entrance
// animations of messages and panes end at once instead of mid-fade.
export async function shot(page, name) {
  await page.emulateMedia({ reducedMotion: 'reduce' });
  await page.screenshot({ path: path.join(ARTIFACTS, name), fullPage: false, animations: 'disabled' });
  await page.emulateMedia({ reducedMotion: null });
}
