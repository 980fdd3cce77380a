// Groups: create one with a title and members, chat, add a member later who then
// sees the history, remove a member.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, signup, quickUser, openConv, send, waitBodies, waitUnread, convItem, T } from './helpers.mjs';

let env;
before(async () => { env = await launch(); });
after(async () => { if (env) await env.close(); });

async function pick(page, inputTestId, user) {
  await page.getByTestId(inputTestId).fill(user.username);
  const results = inputTestId.replace('-search', '-results');
  await page.getByTestId(results).locator(`[data-testid="user-result"][data-username="${user.username}"]`).click({ timeout: T });
}

test('a group of three, then a fourth member who sees the history', async () => {
  const a = await signup(env, 'olga', { display: 'Olga Owner' });
  const b = await quickUser(env, 'boris', { display: 'Boris' });
  const c = await quickUser(env, 'cleo', { display: 'Cleo' });
  const title = 'Book club';
  await a.page.getByTestId('new-group').click();
  await a.page.getByTestId('group-dialog').waitFor({ timeout: T });
  await a.page.getByLabel('Group name').fill(title);
  await pick(a.page, 'group-search', b);
  await pick(a.page, 'group-search', c);
  assert.equal(await a.page.getByTestId('group-chip').count(), 2);
  await a.page.getByTestId('group-create').click();
  await a.page.getByTestId('pane-title').filter({ hasText: title }).waitFor({ timeout: T });
  await a.page.getByTestId('pane-sub').filter({ hasText: '3 members' }).waitFor({ timeout: T });

  await send(a, 'Welcome to the book club');
  for (const u of [b, c]) {
    await waitUnread(u.page, title, 1);
    await openConv(u, title);
    await waitBodies(u.page, ['Welcome to the book club']);
  }
  await send(b, 'First pick: Dune');
  await waitBodies(c.page, ['Welcome to the book club', 'First pick: Dune']);
  await waitBodies(a.page, ['Welcome to the book club', 'First pick: Dune']);
  // sender names in a group
  const authors = await c.page.$$eval('[data-testid="message"] [data-testid="msg-author"]:not([hidden])', (els) => els.map((e) => e.textContent));
  assert.deepEqual(authors, ['Olga Owner', 'Boris']);

  // the owner adds a fourth member, who gets the group live and sees its history
  const d = await quickUser(env, 'dora', { display: 'Dora' });
  await a.page.getByTestId('members-button').click();
  await a.page.getByTestId('members-dialog').waitFor({ timeout: T });
  assert.equal(await a.page.getByTestId('member-row').count(), 3);
  await pick(a.page, 'members-search', d);
  await a.page.waitForFunction(() => document.querySelectorAll('[data-testid="member-row"]').length === 4, null, { timeout: T });
  await a.page.getByRole('button', { name: 'Done' }).click();
  await a.page.getByTestId('pane-sub').filter({ hasText: '4 members' }).waitFor({ timeout: T });

  await convItem(d.page, title).waitFor({ timeout: T });
  await openConv(d, title);
  await waitBodies(d.page, ['Welcome to the book club', 'First pick: Dune']);
  await send(d, 'Thanks for adding me!');
  const all = ['Welcome to the book club', 'First pick: Dune', 'Thanks for adding me!'];
  for (const u of [a, b, c, d]) await waitBodies(u.page, all);

  // the owner removes Cleo: the group leaves her list, the others see 3 members
  await a.page.getByTestId('members-button').click();
  await a.page.getByRole('button', { name: 'Remove Cleo' }).click();
  await a.page.waitForFunction(() => document.querySelectorAll('[data-testid="member-row"]').length === 3, null, { timeout: T });
  await a.page.keyboard.press('Escape');
  await convItem(c.page, title).waitFor({ state: 'detached', timeout: T });
  await b.page.getByTestId('pane-sub').filter({ hasText: '3 members' }).waitFor({ timeout: T });
  await send(a, 'Cleo moved on');
  await waitBodies(d.page, [...all, 'Cleo moved on']);
  // a plain member cannot add or remove
  await b.page.getByTestId('members-button').click();
  assert.equal(await b.page.getByTestId('member-remove').count(), 0);
  assert.equal(await b.page.getByTestId('members-search').isVisible(), false);
  await b.page.keyboard.press('Escape');
  for (const u of [a, b, c, d]) assert.deepEqual(u.errors, []);
});
