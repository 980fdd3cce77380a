// Version 2 message features in the web client, two users in two browser contexts:
// reply (and jump to the original), react, edit, delete, attach an image and a file
// (button and drag-and-drop), search and jump, an offline message that survives a tab
// close and reopen (IndexedDB), desktop notifications, keyboard use, phone width.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { launch, quickUser, startDirect, openConv, send, waitBodies, online, T, PHONE } from './helpers.mjs';
import { SCREEN_DESKTOP, SCREEN_PHONE, screenshot, message, menuAction, png } from './v2-helpers.mjs';

let env;
before(async () => { env = await launch(); });
after(async () => { if (env) await env.close(); });

let a;
let b;

test('reply, react, edit and delete, seen live by the other user', { timeout: 120000 }, async () => {
  a = await quickUser(env, 'ann', { display: 'Ann' });
  b = await quickUser(env, 'ben', { display: 'Ben' });
  await startDirect(a, b);
  await send(a, 'Lunch at noon?');
  await send(a, 'Or one o clock');
  await b.page.getByTestId('conv-item').first().click();
  await waitBodies(b.page, ['Lunch at noon?', 'Or one o clock']);

  // B replies to the first message through its menu
  await menuAction(b.page, message(b.page, 'Lunch at noon?'), 'menu-reply');
  await b.page.getByTestId('reply-bar-quote').filter({ hasText: 'Lunch at noon?' }).waitFor();
  await send(b, 'Noon works');
  await b.page.getByTestId('reply-bar').waitFor({ state: 'hidden' });
  const reply = message(a.page, 'Noon works');
  await reply.getByTestId('reply-quote').filter({ hasText: 'Lunch at noon?' }).waitFor();
  // the quote jumps to the original: it is focused and in view
  await reply.getByTestId('reply-quote').click();
  await a.page.waitForFunction(() => document.activeElement && document.activeElement.dataset.seq === '1', null, { timeout: T });

  // A reacts with 👍; B sees the count and who reacted, and adds its own
  await menuAction(a.page, message(a.page, 'Noon works'), 'react-option', '👍');
  const rb = message(b.page, 'Noon works').locator('[data-testid="reaction"][data-emoji="👍"]');
  await rb.getByTestId('reaction-count').filter({ hasText: /^1$/ }).waitFor();
  assert.match(await rb.getAttribute('title'), /Ann/);
  assert.equal(await rb.getAttribute('aria-pressed'), 'false');
  await rb.click();
  const ra = message(a.page, 'Noon works').locator('[data-testid="reaction"][data-emoji="👍"]');
  await ra.getByTestId('reaction-count').filter({ hasText: /^2$/ }).waitFor();
  assert.match(await ra.getAttribute('title'), /You, Ben|Ben/);
  await b.page.waitForFunction(() => document.querySelector('[data-testid="reaction"][data-emoji="👍"]')?.getAttribute('aria-pressed') === 'true', null, { timeout: T });
  // the menu offers the emoji already there plus the common ones
  await message(b.page, 'Noon works').hover();
  await message(b.page, 'Noon works').getByTestId('msg-menu-button').click();
  assert.ok(await b.page.locator('[data-testid="msg-menu"] [data-testid="react-option"]').count() >= 6);
  await b.page.keyboard.press('Escape');
  await b.page.getByTestId('msg-menu').waitFor({ state: 'detached' });

  // A edits its own message inline: B sees the new text and "edited"
  await menuAction(a.page, message(a.page, 'Or one o clock'), 'menu-edit');
  const input = a.page.getByTestId('edit-input');
  await input.fill("Or one o'clock");
  await input.press('Enter');
  const edited = message(b.page, "Or one o'clock");
  await edited.getByTestId('msg-edited').waitFor();
  // B cannot edit or delete A's message in a direct conversation
  await message(b.page, "Or one o'clock").hover();
  await message(b.page, "Or one o'clock").getByTestId('msg-menu-button').click();
  assert.equal(await b.page.getByTestId('menu-edit').count(), 0);
  assert.equal(await b.page.getByTestId('menu-delete').count(), 0);
  await b.page.keyboard.press('Escape');

  // A deletes it: a tombstone on both sides, in place
  await menuAction(a.page, message(a.page, "Or one o'clock"), 'menu-delete');
  await a.page.getByTestId('delete-confirm').click();
  for (const u of [a, b]) {
    await waitBodies(u.page, ['Lunch at noon?', 'Message deleted', 'Noon works']);
    const tomb = u.page.locator('[data-testid="message"][data-deleted="true"]');
    assert.equal(await tomb.count(), 1);
    assert.equal(await tomb.getByTestId('msg-menu-button').isHidden(), true);
  }
  // the list preview follows
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
});

test('the message menu works from the keyboard', { timeout: 120000 }, async () => {
  const btn = message(a.page, 'Noon works').getByTestId('msg-menu-button');
  await btn.focus();
  await a.page.keyboard.press('Enter');
  await a.page.getByTestId('msg-menu').waitFor();
  assert.equal(await a.page.evaluate(() => document.activeElement.dataset.testid), 'react-option');
  assert.equal(await btn.getAttribute('aria-expanded'), 'true');
  await a.page.keyboard.press('End');
  assert.equal(await a.page.evaluate(() => document.activeElement.dataset.testid), 'menu-reply');
  await a.page.keyboard.press('Escape');
  await a.page.getByTestId('msg-menu').waitFor({ state: 'detached' });
  assert.equal(await a.page.evaluate(() => document.activeElement.getAttribute('data-testid')), 'msg-menu-button');
  // reply from the keyboard, then Escape in the composer cancels the reply
  await a.page.keyboard.press('Enter');
  await a.page.keyboard.press('End');
  await a.page.keyboard.press('Enter');
  await a.page.getByTestId('reply-bar').waitFor();
  assert.equal(await a.page.evaluate(() => document.activeElement.id), 'composer');
  await a.page.keyboard.press('Escape');
  await a.page.getByTestId('reply-bar').waitFor({ state: 'hidden' });
});

test('attach an image and a file: progress, inline image, download chip', { timeout: 120000 }, async () => {
  const text = 'a plain text file\n'.repeat(100);
  await a.page.getByTestId('file-input').setInputFiles([
    { name: 'dot.png', mimeType: 'image/png', buffer: png() },
    { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from(text) },
  ]);
  await a.page.locator('[data-testid="attach-item"][data-state="done"]').nth(1).waitFor();
  await a.page.getByTestId('composer').fill('two files');
  await a.page.getByTestId('send').click();
  await a.page.getByTestId('attach-tray').waitFor({ state: 'hidden' });
  for (const u of [a, b]) {
    const m = message(u.page, 'two files');
    const img = m.getByTestId('att-img');
    await u.page.waitForFunction((el) => el.complete && el.naturalWidth > 0, await img.elementHandle(), { timeout: T });
    assert.match(await img.getAttribute('src'), /^blob:/);
    assert.equal(await img.getAttribute('alt'), 'dot.png');
    const chip = m.getByTestId('att-file');
    assert.equal(await chip.getByTestId('att-name').textContent(), 'notes.txt');
    assert.equal(await chip.getByTestId('att-size').textContent(), '1.8 KB');
  }
  // the file downloads with its bytes
  const [dl] = await Promise.all([b.page.waitForEvent('download'), message(b.page, 'two files').getByTestId('att-file').click()]);
  assert.equal(dl.suggestedFilename(), 'notes.txt');
  assert.equal(readFileSync(await dl.path(), 'utf8'), text);
  // the image opens full size and closes back to it
  await message(b.page, 'two files').getByTestId('att-image').click();
  await b.page.getByTestId('image-dialog').waitFor();
  await b.page.waitForFunction(() => document.getElementById('image-full').naturalWidth > 0, null, { timeout: T });
  await b.page.keyboard.press('Escape');
  await b.page.getByTestId('image-dialog').waitFor({ state: 'hidden' });

  // drag and drop a file onto the conversation, with upload progress shown
  const big = Buffer.alloc(3 * 1024 * 1024, 7);
  await b.page.evaluate(() => {
    window.__progress = [];
    window.parley.on('upload_progress', (p) => window.__progress.push([p.loaded, p.total]));
  });
  await b.page.evaluate((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], 'dropped.bin', { type: 'application/octet-stream' }));
    const pane = document.getElementById('pane-conv');
    pane.dispatchEvent(new DragEvent('dragenter', { dataTransfer: dt, bubbles: true, cancelable: true }));
    pane.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, big.toString('base64'));
  await b.page.locator('[data-testid="attach-item"][data-name="dropped.bin"]').waitFor();
  await b.page.locator('[data-testid="attach-item"][data-state="done"]').waitFor();
  const progress = await b.page.evaluate(() => window.__progress);
  assert.deepEqual(progress[0], [0, big.length]);
  assert.deepEqual(progress.at(-1), [big.length, big.length]);
  assert.ok(progress.every(([l], i) => i === 0 || l >= progress[i - 1][0]), 'progress only grows');
  await b.page.getByTestId('composer').press('Enter'); // an attachment alone: no text needed
  await message(a.page, 'dropped.bin', 'att-name').waitFor();
  assert.equal(await message(a.page, 'dropped.bin', 'att-name').getByTestId('att-size').textContent(), '3.0 MB');
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
});

test('search over all conversations opens the conversation at the message', { timeout: 120000 }, async () => {
  const c = await quickUser(env, 'cy', { display: 'Cy' });
  await startDirect(c, b);
  const word = `pelican${Date.now().toString(36)}`;
  // the hit sits far back, under 80 later messages
  await c.page.evaluate(async ([w]) => {
    const p = window.parley;
    const conv = Number(location.hash.split('/').pop());
    await p.send(conv, `the ${w} is back`);
    // sends on one connection take seqs in the order sent: no need to wait for each ack
    await Promise.all(Array.from({ length: 80 }, (_, i) => p.send(conv, `filler ${i}`)));
  }, [word]);
  await b.page.getByTestId('message-search').fill(word.slice(0, -2)); // prefix of the last word
  const hit = b.page.getByTestId('search-result').first();
  await hit.waitFor();
  assert.equal(await b.page.getByTestId('search-result').count(), 1);
  assert.match(await hit.getByTestId('search-result-body').textContent(), new RegExp(`the ${word} is back`));
  await hit.click();
  await b.page.getByTestId('pane-title').filter({ hasText: 'Cy' }).waitFor();
  const target = message(b.page, `the ${word} is back`);
  await b.page.waitForFunction((el) => document.activeElement === el, await target.elementHandle(), { timeout: T });
  assert.ok(await target.isVisible());
  const box = await target.boundingBox();
  const pane = await b.page.getByTestId('messages').boundingBox();
  assert.ok(box.y >= pane.y && box.y + box.height <= pane.y + pane.height, 'the message is in view');
  // Escape clears the search and shows the conversations again
  await b.page.getByTestId('message-search').press('Escape');
  await b.page.getByTestId('search-panel').waitFor({ state: 'hidden' });
  await b.page.getByTestId('conv-list').waitFor();
  test.c = c;
});

test('a message written offline survives closing the tab and goes out once on reopening', { timeout: 120000 }, async () => {
  await openConv(b, 'Ann');
  await b.ctx.setOffline(true);
  await b.page.locator('[data-testid="connection-banner"][data-state="offline"]').waitFor();
  await send(b, 'written on the train');
  const pending = message(b.page, 'written on the train');
  assert.equal(await pending.getAttribute('data-status'), 'pending');
  await b.page.evaluate(() => window.parley.outboxSaved());
  await b.page.close();

  await b.ctx.setOffline(false);
  const page = await b.ctx.newPage();
  b.page = page;
  page.on('pageerror', (e) => b.errors.push(e.message));
  await page.goto('/');
  await online(page);
  await message(a.page, 'written on the train').waitFor();
  await openConv(b, 'Ann');
  await page.waitForFunction(() => {
    const m = [...document.querySelectorAll('[data-testid="message"]')].find((x) => x.textContent.includes('written on the train'));
    return m && m.dataset.status !== 'pending';
  }, null, { timeout: T });
  // exactly once, also after a while and after another reload
  await a.page.waitForTimeout(500);
  const hist = await a.page.evaluate(async () => window.parley.history(Number(location.hash.split('/').pop()), { limit: 50 }));
  assert.equal(hist.messages.filter((m) => m.body === 'written on the train').length, 1);
  assert.equal(await a.page.getByTestId('message').filter({ hasText: 'written on the train' }).count(), 1);
  await page.reload();
  await online(page);
  await page.waitForTimeout(500);
  assert.equal(await page.evaluate(() => window.parley.pending().length), 0);
  const hist2 = await a.page.evaluate(async () => window.parley.history(Number(location.hash.split('/').pop()), { limit: 50 }));
  assert.equal(hist2.messages.filter((m) => m.body === 'written on the train').length, 1);
});

test('desktop notifications: asked for with the button only, shown for conversations not in view', { timeout: 120000 }, async () => {
  const u = await env.open();
  // A Notification stand-in that records what the app asks for.
  await u.ctx.addInitScript(() => {
    const log = { requested: 0, shown: [] };
    window.__notes = log;
    class FakeNotification {
      constructor(title, opts = {}) { log.shown.push({ title, body: opts.body }); }
      close() {}
      static requestPermission() { log.requested++; FakeNotification.permission = 'granted'; return Promise.resolve('granted'); }
    }
    FakeNotification.permission = 'default';
    window.Notification = FakeNotification;
  });
  const d = await quickUserIn(u, 'dee', 'Dee');
  assert.equal(await d.page.evaluate(() => window.__notes.requested), 0, 'never asked on load');
  await d.page.getByTestId('notify-button').click();
  await d.page.getByTestId('notify-button').waitFor({ state: 'hidden' });
  assert.equal(await d.page.evaluate(() => window.__notes.requested), 1);
  await startDirect(a, d);
  await send(a, 'ping for Dee');
  await d.page.waitForFunction(() => window.__notes.shown.length === 1, null, { timeout: T });
  assert.deepEqual(await d.page.evaluate(() => window.__notes.shown[0]), { title: 'Ann', body: 'ping for Dee' });
  // in view: no notification
  await openConv(d, 'Ann');
  await send(a, 'seen already');
  await message(d.page, 'seen already').waitFor();
  await d.page.waitForTimeout(300);
  assert.equal(await d.page.evaluate(() => window.__notes.shown.length), 1);
});

test('in a group the owner deletes a member\'s message; the member may not delete the owner\'s', { timeout: 120000 }, async () => {
  const bid = await b.page.evaluate(() => window.parley.user.id);
  await a.page.evaluate((id) => window.parley.createGroup('Crew', [id]), bid);
  await openConv(a, 'Crew');
  await send(a, 'owner speaking');
  await openConv(b, 'Crew');
  await send(b, 'member speaking');
  await waitBodies(a.page, ['owner speaking', 'member speaking']);
  await message(b.page, 'owner speaking').hover();
  await message(b.page, 'owner speaking').getByTestId('msg-menu-button').click();
  await b.page.getByTestId('menu-reply').waitFor();
  assert.equal(await b.page.getByTestId('menu-delete').count(), 0);
  await b.page.keyboard.press('Escape');
  await message(a.page, 'member speaking').hover();
  await message(a.page, 'member speaking').getByTestId('msg-menu-button').click();
  await a.page.getByTestId('menu-delete').waitFor();
  assert.equal(await a.page.getByTestId('menu-edit').count(), 0); // not the owner's to edit
  await a.page.getByTestId('menu-delete').click();
  await a.page.getByTestId('delete-confirm').click();
  await waitBodies(b.page, ['owner speaking', 'Message deleted']);
  await waitBodies(a.page, ['owner speaking', 'Message deleted']);
});

// quickUser in a context made beforehand (to install init scripts first).
async function quickUserIn(u, prefix, display) {
  const orig = env.open;
  env.open = async () => u;
  try { return await quickUser(env, prefix, { display }); } finally { env.open = orig; }
}

test('screenshots at desktop and phone width; long press opens the menu on touch', { timeout: 120000 }, async () => {
  await openConv(a, 'Ben');
  await a.page.setViewportSize(SCREEN_DESKTOP);
  await screenshot(a.page, 'v2-conversation-desktop.png');
  await message(a.page, 'Noon works').hover();
  await message(a.page, 'Noon works').getByTestId('msg-menu-button').click();
  await screenshot(a.page, 'v2-menu-desktop.png');
  await a.page.keyboard.press('Escape');
  await a.page.getByTestId('message-search').fill('noon');
  await a.page.getByTestId('search-result').first().waitFor();
  await screenshot(a.page, 'v2-search-desktop.png');
  await a.page.getByTestId('message-search').press('Escape');

  await b.page.setViewportSize(SCREEN_PHONE);
  await b.page.getByTestId('back').click(); // at phone width the list and the conversation take turns
  await b.page.getByTestId('conv-list').waitFor();
  await screenshot(b.page, 'v2-list-phone.png');
  await openConv(b, 'Ann');
  await screenshot(b.page, 'v2-conversation-phone.png');
  // a long press (touch) opens the menu as a sheet
  const bubble = message(b.page, 'Noon works').locator('.bubble');
  await bubble.dispatchEvent('pointerdown', { pointerType: 'touch', isPrimary: true });
  await b.page.getByTestId('msg-menu').waitFor();
  await bubble.dispatchEvent('pointerup', { pointerType: 'touch', isPrimary: true });
  assert.ok(await b.page.getByTestId('msg-menu').evaluate((m) => m.classList.contains('sheet')));
  await screenshot(b.page, 'v2-menu-phone.png');
  await b.page.keyboard.press('Escape');
  // the composer with a reply and an attachment fits at phone width
  await menuAction(b.page, message(b.page, 'Noon works'), 'menu-reply');
  await b.page.getByTestId('file-input').setInputFiles([{ name: 'a-rather-long-file-name-for-a-phone.txt', mimeType: 'text/plain', buffer: Buffer.from('x') }]);
  await b.page.locator('[data-testid="attach-item"][data-state="done"]').waitFor();
  const overflow = await b.page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  assert.equal(overflow, false, 'nothing wider than the phone');
  await screenshot(b.page, 'v2-composer-phone.png');
  assert.deepEqual(PHONE.width, SCREEN_PHONE.width);
});
