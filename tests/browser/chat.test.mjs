// Two people in two browser contexts: sign up, start a direct conversation, chat live.
// Also: message statuses, typing, Shift+Enter, bodies shown as text, screenshots.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, signup, startDirect, openConv, send, waitBodies, waitUnread, shot, T, PHONE, DESKTOP, convItem } from './helpers.mjs';

let env;
before(async () => { env = await launch(); });
after(async () => { if (env) await env.close(); });

test('two users chat live in a direct conversation', async () => {
  const a = await signup(env, 'alice', { display: 'Alice Liddell' });
  const b = await signup(env, 'bob', { display: 'Bob Marley' });

  await startDirect(a, b);
  await send(a, 'Hi Bob! Ça va?');
  // own message: pending, then sent once acked
  const mine = a.page.getByTestId('message').filter({ hasText: 'Hi Bob!' });
  await a.page.waitForFunction(() => {
    const m = document.querySelector('[data-testid="message"]');
    return m && (m.dataset.status === 'sent' || m.dataset.status === 'read');
  }, null, { timeout: T });
  assert.ok(await mine.getAttribute('data-seq'));

  // B sees the conversation appear with one unread message, live
  await waitUnread(b.page, 'Alice Liddell', 1);
  await openConv(b, 'Alice Liddell');
  await waitBodies(b.page, ['Hi Bob! Ça va?']);
  await waitUnread(b.page, 'Alice Liddell', 0);
  // A sees it read
  await a.page.waitForFunction(() => document.querySelector('[data-testid="message"]').dataset.status === 'read', null, { timeout: T });

  // typing indicator
  await b.page.getByTestId('composer').pressSequentially('Hey', { delay: 20 });
  await a.page.getByTestId('typing').filter({ hasText: 'Bob is typing' }).waitFor({ timeout: T });
  // Shift+Enter is a newline, Enter sends
  await b.page.getByTestId('composer').press('Shift+Enter');
  await b.page.getByTestId('composer').pressSequentially('second line');
  await b.page.getByTestId('composer').press('Enter');
  await waitBodies(a.page, ['Hi Bob! Ça va?', 'Hey\nsecond line']);
  await waitBodies(b.page, ['Hi Bob! Ça va?', 'Hey\nsecond line']);
  assert.equal(await b.page.getByTestId('composer').inputValue(), '');
  await a.page.getByTestId('typing').filter({ hasText: /^$/ }).waitFor({ timeout: T });

  for (let i = 1; i <= 3; i++) await send(a, `ping ${i}`);
  await waitBodies(b.page, ['Hi Bob! Ça va?', 'Hey\nsecond line', 'ping 1', 'ping 2', 'ping 3']);
  // sender names and a day separator
  const author = b.page.getByTestId('message').first().getByTestId('msg-author');
  assert.equal(await author.textContent(), 'Alice Liddell');
  assert.equal(await b.page.getByTestId('day-separator').count(), 1);
  assert.equal(await b.page.getByTestId('day-separator').textContent(), 'Today');
  // the list shows the last message
  await convItem(a.page, 'Bob Marley').getByTestId('conv-preview').filter({ hasText: 'You: ping 3' }).waitFor({ timeout: T });
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  test.a = a; test.b = b;
});

test('a body that looks like HTML is shown as text and runs nothing', async () => {
  const { a, b } = test;
  const evil = '<img src=x onerror=alert(1)>';
  const evil2 = '<script>alert(2)</script><b>bold?</b>';
  await send(a, evil);
  await send(a, evil2);
  const want = ['Hi Bob! Ça va?', 'Hey\nsecond line', 'ping 1', 'ping 2', 'ping 3', evil, evil2];
  await waitBodies(b.page, want);
  await waitBodies(a.page, want);
  for (const u of [a, b]) {
    assert.equal(await u.page.locator('[data-testid="msg-body"] img, [data-testid="msg-body"] script, [data-testid="msg-body"] b').count(), 0);
    const last = u.page.getByTestId('message').last();
    assert.equal(await last.getByTestId('msg-body').textContent(), evil2);
  }
  // the preview in the list is text too
  await convItem(b.page, 'Alice Liddell').getByTestId('conv-preview').filter({ hasText: '<script>' }).waitFor({ timeout: T });
  await new Promise((r) => setTimeout(r, 300)); // give a (wrongly) injected handler its chance
  assert.deepEqual(a.dialogs, []);
  assert.deepEqual(b.dialogs, []);
});

test('screenshots of the main screen at desktop and phone width', async () => {
  const { a, b } = test;
  await b.page.setViewportSize(DESKTOP);
  await shot(b.page, 'main-desktop.png');
  await a.page.setViewportSize(PHONE);
  await a.page.getByTestId('back').click();
  await a.page.getByTestId('conv-list').waitFor({ timeout: T });
  await shot(a.page, 'list-phone.png');
  await openConv(a, 'Bob Marley');
  await shot(a.page, 'conversation-phone.png');
  // the composer is usable at phone width
  await send(a, 'from my phone');
  await b.page.getByTestId('message').filter({ hasText: 'from my phone' }).waitFor({ timeout: T });
});
