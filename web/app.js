// Parley web client: plain ES module, no build step, no framework.
// Everything the user typed or another user sent is put in the page with
// textContent (never innerHTML), so a message body can never become markup.
import { ParleyClient, ParleyError } from './parley.js';

const $ = (id) => document.getElementById(id);
const client = new ParleyClient({ pingIntervalMs: 10000, pingTimeoutMs: 5000 });
// For debugging from the console and for tests.
window.parley = client;

// ---------------------------------------------------------------- state
const S = {
  me: null,
  convs: new Map(), // id -> conversation (server object + live fields)
  active: null, // open conversation id
  views: new Map(), // conv id -> {msgs: Map(seq -> msg), pending: Map(id -> p), loaded, hasMore, loading}
  receipts: new Map(), // conv id -> Map(user id -> highest seq they read)
  typing: new Map(), // conv id -> Map(user id -> expires at)
  users: new Map(), // user id -> {id, username, display_name}
  online: new Set(),
};

// ---------------------------------------------------------------- helpers
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

const ICONS = {
  clock: 'M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 18a8 8 0 1 1 0-16 8 8 0 0 1 0 16zm.5-13H11v6l5.2 3.1.8-1.2-4.5-2.7V7z',
  check: 'M9 16.2L4.8 12l-1.4 1.4L9 19 21 7l-1.4-1.4L9 16.2z',
  checks: 'M18 7l-1.4-1.4-6.3 6.3 1.4 1.4L18 7zm4.2-1.4L11.7 16.2 7.5 12l-1.4 1.4 5.6 5.6 12-12-1.5-1.4zM.4 13.4L6 19l1.4-1.4L1.8 12 .4 13.4z',
  alert: 'M1 21h22L12 2 1 21zm12-3h-2v-2h2v2zm0-4h-2v-4h2v4z',
};
function icon(name) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  const p = document.createElementNS(NS, 'path');
  p.setAttribute('d', ICONS[name]);
  svg.append(p);
  return svg;
}

function displayName(u) { return (u && (u.display_name || u.username)) || 'Someone'; }
function userName(id) {
  if (S.me && id === S.me.id) return displayName(S.me);
  return displayName(S.users.get(id)) || 'Former member';
}
function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const s = parts.length > 1 ? parts[0][0] + parts[1][0] : (parts[0] || '?').slice(0, 2);
  return s.toUpperCase();
}
function hueOf(n) { return (Number(n) * 137.508) % 360; }
function fillAvatar(node, name, key) {
  node.textContent = initials(name);
  node.style.setProperty('--hue', String(Math.round(hueOf(key))));
}

const fmtTime = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const fmtWeekday = new Intl.DateTimeFormat(undefined, { weekday: 'short' });
const fmtShortDate = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
const fmtLongDate = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });
const fmtFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
function dayKey(ts) { const d = new Date(ts); return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`; }
function dayLabel(ts) {
  const now = new Date();
  const today = dayKey(now);
  const y = new Date(now); y.setDate(now.getDate() - 1);
  const k = dayKey(ts);
  if (k === today) return 'Today';
  if (k === dayKey(y)) return 'Yesterday';
  return fmtLongDate.format(new Date(ts));
}
function listTime(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  const now = Date.now();
  if (dayKey(ts) === dayKey(now)) return fmtTime.format(d);
  if (now - ts < 6 * 86400000) return fmtWeekday.format(d);
  return fmtShortDate.format(d);
}

function errorText(e) {
  if (e instanceof ParleyError) {
    switch (e.code) {
      case 'network': return 'Cannot reach the server. Check your connection and try again.';
      case 'rate_limited': return 'Slow down a little, then try again.';
      case 'too_large': return 'That message is too long.';
      default: return e.message || 'Something went wrong.';
    }
  }
  return (e && e.message) || 'Something went wrong.';
}

function show(node, on) { node.hidden = !on; }

// Make parent's children exactly `nodes`, moving as little as possible (a moved node
// restarts its CSS animation and loses focus, so nodes already in place stay put).
function reconcile(parent, nodes) {
  const want = new Set(nodes);
  for (const c of [...parent.children]) if (!want.has(c)) c.remove();
  let cur = parent.firstElementChild;
  for (const n of nodes) {
    if (n === cur) { cur = cur.nextElementSibling; continue; }
    parent.insertBefore(n, cur);
  }
}

// ---------------------------------------------------------------- views
function setView(v) { $('app').dataset.view = v; show($('auth'), v === 'auth'); show($('main'), v === 'main'); }

// ---------------------------------------------------------------- auth screen
let authMode = 'login';
function setAuthMode(mode) {
  authMode = mode;
  const signup = mode === 'signup';
  $('tab-login').setAttribute('aria-selected', String(!signup));
  $('tab-signup').setAttribute('aria-selected', String(signup));
  $('tab-login').tabIndex = signup ? -1 : 0;
  $('tab-signup').tabIndex = signup ? 0 : -1;
  $('auth-form').setAttribute('aria-labelledby', signup ? 'tab-signup' : 'tab-login');
  show($('auth-display-field'), signup);
  show($('auth-username-hint'), signup);
  show($('auth-password-hint'), signup);
  $('auth-password').autocomplete = signup ? 'new-password' : 'current-password';
  $('auth-heading').textContent = signup ? 'Create your account' : 'Welcome back';
  $('auth-sub').textContent = signup ? 'It takes ten seconds. No email needed.' : 'Log in to pick up where you left off.';
  $('auth-submit').textContent = signup ? 'Create account' : 'Log in';
  show($('auth-error'), false);
}

function authError(msg) { $('auth-error').textContent = msg; show($('auth-error'), !!msg); }

function setupAuth() {
  $('tab-login').addEventListener('click', () => setAuthMode('login'));
  $('tab-signup').addEventListener('click', () => setAuthMode('signup'));
  document.querySelector('.tabs').addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return;
    const next = authMode === 'login' ? 'signup' : 'login';
    setAuthMode(next);
    $(`tab-${next}`).focus();
  });
  $('auth-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const username = $('auth-username').value.trim();
    const password = $('auth-password').value;
    const display = $('auth-display').value.trim();
    if (!/^[A-Za-z0-9_.-]{3,32}$/.test(username)) { authError('Usernames are 3–32 letters, digits, dots, dashes or underscores.'); $('auth-username').focus(); return; }
    if (password.length < 8) { authError('Passwords have at least 8 characters.'); $('auth-password').focus(); return; }
    const btn = $('auth-submit');
    btn.disabled = true;
    btn.classList.add('busy');
    authError('');
    try {
      if (authMode === 'signup') await client.signup({ username, password, display_name: display || undefined });
      else await client.login(username, password);
      $('auth-password').value = '';
    } catch (err) {
      if (err.code === 'unauthorized') authError('Wrong username or password.');
      else if (err.code === 'conflict') authError('That username is taken. Try another one.');
      else authError(errorText(err));
    } finally {
      btn.disabled = false;
      btn.classList.remove('busy');
    }
  });
}

// ---------------------------------------------------------------- conversations
function rememberUsers(list) {
  for (const u of list || []) {
    const prev = S.users.get(u.id);
    S.users.set(u.id, { ...prev, id: u.id, username: u.username, display_name: u.display_name });
  }
}

function upsertConv(c) {
  const prev = S.convs.get(c.id);
  rememberUsers(c.members);
  const conv = { ...prev, ...c };
  // keep what we learned live if the snapshot is older
  if (prev) {
    conv.last_seq = Math.max(prev.last_seq || 0, c.last_seq || 0);
    conv.last_read_seq = Math.max(prev.last_read_seq || 0, c.last_read_seq || 0);
    if (prev.last_message && (!c.last_message || prev.last_message.seq > c.last_message.seq)) conv.last_message = prev.last_message;
  }
  S.convs.set(c.id, conv);
  return conv;
}

function isMember(c) { return !!(S.me && c.members && c.members.some((m) => m.id === S.me.id)); }
function myRole(c) { const m = c.members && c.members.find((x) => x.id === S.me.id); return m ? m.role : null; }
function others(c) { return (c.members || []).filter((m) => m.id !== S.me.id); }
function convTitle(c) {
  if (c.kind === 'group') return c.title || 'Group';
  const o = others(c)[0];
  return o ? displayName(o) : 'Just you';
}
function convAvatarKey(c) { return c.kind === 'group' ? c.id * 7 + 3 : (others(c)[0] || { id: c.id }).id; }
function unread(c) { return Math.max(0, (c.last_seq || 0) - (c.last_read_seq || 0)); }
function activity(c) { return (c.last_message && c.last_message.ts) || c.created_at || 0; }
function anyOnline(c) { return others(c).some((m) => S.online.has(m.id)); }

async function loadConversations() {
  const list = await client.conversations();
  const seen = new Set();
  for (const c of list) { upsertConv(c); seen.add(c.id); }
  for (const id of [...S.convs.keys()]) if (!seen.has(id)) S.convs.delete(id);
  renderConvList();
}

const refetching = new Set();
async function refetchConv(id) {
  if (refetching.has(id)) return;
  refetching.add(id);
  try {
    const c = await client.conversation(id);
    if (isMember(c)) upsertConv(c);
    renderConvList();
    if (S.active === id) renderPaneHead();
  } catch (e) {
    if (e.code === 'not_found') dropConv(id);
  } finally { refetching.delete(id); }
}

function dropConv(id) {
  S.convs.delete(id);
  S.views.delete(id);
  if (S.active === id) { openConv(null); }
  renderConvList();
}

// ---------------------------------------------------------------- conversation list
const convEls = new Map();
function renderConvList() {
  const list = $('conv-list');
  const convs = [...S.convs.values()].sort((a, b) => activity(b) - activity(a) || b.id - a.id);
  const hadFocus = list.contains(document.activeElement) ? document.activeElement.dataset.convId : null;
  const items = [];
  for (const c of convs) {
    let li = convEls.get(c.id);
    if (!li) {
      const btn = el('button', { type: 'button', class: 'conv', 'data-testid': 'conv-item', dataset: { convId: String(c.id) } },
        el('span', { class: 'avatar-wrap' },
          el('span', { class: 'avatar', 'aria-hidden': 'true' }),
          el('span', { class: 'dot', 'data-testid': 'presence-dot', 'aria-hidden': 'true' })),
        el('span', { class: 'conv-main' },
          el('span', { class: 'conv-row' },
            el('span', { class: 'conv-title', 'data-testid': 'conv-title' }),
            el('time', { class: 'conv-time' })),
          el('span', { class: 'conv-row' },
            el('span', { class: 'conv-preview', 'data-testid': 'conv-preview' }),
            el('span', { class: 'badge', 'data-testid': 'unread-badge', hidden: true }))));
      btn.addEventListener('click', () => openConv(c.id, { focusComposer: true }));
      li = el('li', {}, btn);
      convEls.set(c.id, li);
    }
    const btn = li.firstChild;
    const title = convTitle(c);
    const n = unread(c);
    const on = anyOnline(c);
    fillAvatar(btn.querySelector('.avatar'), title, convAvatarKey(c));
    const dot = btn.querySelector('.dot');
    dot.classList.toggle('online', on);
    dot.dataset.online = String(on);
    btn.querySelector('.conv-title').textContent = title;
    const t = btn.querySelector('.conv-time');
    const ts = c.last_message ? c.last_message.ts : c.created_at;
    t.textContent = listTime(ts);
    if (ts) t.dateTime = new Date(ts).toISOString();
    const lm = c.last_message;
    let preview = 'No messages yet';
    if (lm) {
      const who = lm.from === S.me.id ? 'You: ' : c.kind === 'group' ? `${userName(lm.from).split(/\s+/)[0]}: ` : '';
      preview = who + lm.body.replace(/\s+/g, ' ');
    }
    btn.querySelector('.conv-preview').textContent = preview;
    const badge = btn.querySelector('.badge');
    badge.textContent = n > 99 ? '99+' : String(n);
    badge.dataset.count = String(n);
    badge.hidden = n === 0;
    btn.classList.toggle('unread', n > 0);
    const active = S.active === c.id;
    btn.classList.toggle('active', active);
    if (active) btn.setAttribute('aria-current', 'true'); else btn.removeAttribute('aria-current');
    btn.setAttribute('aria-label', [title, n ? `${n} unread` : null, c.kind === 'direct' ? (on ? 'online' : 'offline') : null, lm ? `last message: ${preview}` : null].filter(Boolean).join(', '));
    btn.tabIndex = -1;
    items.push(li);
  }
  for (const [id, li] of convEls) if (!S.convs.has(id)) { li.remove(); convEls.delete(id); }
  reconcile(list, items);
  // roving tabindex: one stop in the tab order for the whole list
  const current = items.find((li) => li.firstChild.classList.contains('active')) || items[0];
  if (current) current.firstChild.tabIndex = 0;
  if (hadFocus && !list.contains(document.activeElement)) {
    const b = list.querySelector(`[data-conv-id="${hadFocus}"]`);
    if (b) b.focus();
  }
  show($('conv-empty'), items.length === 0);
  let total = 0;
  for (const c of S.convs.values()) total += unread(c);
  document.title = total ? `(${total}) Parley` : 'Parley';
}

function setupConvListKeys() {
  $('conv-list').addEventListener('keydown', (e) => {
    const btns = [...$('conv-list').querySelectorAll('.conv')];
    const i = btns.indexOf(document.activeElement);
    if (i < 0) return;
    let j = null;
    if (e.key === 'ArrowDown') j = Math.min(btns.length - 1, i + 1);
    else if (e.key === 'ArrowUp') j = Math.max(0, i - 1);
    else if (e.key === 'Home') j = 0;
    else if (e.key === 'End') j = btns.length - 1;
    if (j === null) return;
    e.preventDefault();
    for (const b of btns) b.tabIndex = -1;
    btns[j].tabIndex = 0;
    btns[j].focus();
  });
}

// ---------------------------------------------------------------- people search (combobox)
function peoplePicker({ input, results, onPick, exclude = () => new Set(), label = (u) => `Chat with ${displayName(u)}` }) {
  let timer = null;
  let token = 0;
  let items = [];
  let activeIdx = -1;
  const close = () => {
    results.hidden = true;
    results.replaceChildren();
    items = [];
    input.setAttribute('aria-expanded', 'false');
    input.removeAttribute('aria-activedescendant');
    activeIdx = -1;
  };
  const highlight = (i) => {
    activeIdx = i;
    [...results.children].forEach((li, k) => li.setAttribute('aria-selected', String(k === i)));
    if (i >= 0 && results.children[i]) {
      input.setAttribute('aria-activedescendant', results.children[i].id);
      results.children[i].scrollIntoView({ block: 'nearest' });
    }
  };
  const pick = (u) => { close(); input.value = ''; onPick(u); };
  const render = (users) => {
    items = users;
    const ex = exclude();
    const rows = users.filter((u) => !ex.has(u.id)).map((u, k) => {
      rememberUsers([u]);
      if (u.online) S.online.add(u.id); else S.online.delete(u.id);
      const av = el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true' });
      fillAvatar(av, displayName(u), u.id);
      return el('li', {
        id: `${results.id}-${k}`, role: 'option', class: 'result', 'data-testid': 'user-result', 'aria-selected': 'false',
        dataset: { userId: String(u.id), username: u.username }, 'aria-label': label(u),
        onmousedown: (e) => e.preventDefault(), onclick: () => pick(u),
      }, el('span', { class: 'avatar-wrap' }, av, el('span', { class: `dot${u.online ? ' online' : ''}`, 'aria-hidden': 'true' })),
      el('span', { class: 'result-text' }, el('span', { class: 'result-name', text: displayName(u) }), el('span', { class: 'result-handle', text: `@${u.username}` })));
    });
    items = users.filter((u) => !ex.has(u.id));
    if (!rows.length) rows.push(el('li', { class: 'result-empty', role: 'option', 'aria-disabled': 'true', text: 'Nobody found' }));
    results.replaceChildren(...rows);
    results.hidden = false;
    input.setAttribute('aria-expanded', 'true');
    highlight(items.length ? 0 : -1);
  };
  input.addEventListener('input', () => {
    clearTimeout(timer);
    const q = input.value.trim().toLowerCase();
    if (!q) { close(); return; }
    const mine = ++token;
    timer = setTimeout(async () => {
      try {
        const users = await client.searchUsers(q, { limit: 8 });
        if (mine === token && input.value.trim()) render(users);
      } catch { /* offline: nothing to show */ }
    }, 150);
  });
  input.addEventListener('keydown', (e) => {
    if (results.hidden) {
      if (e.key === 'Enter' && input.value.trim()) e.preventDefault(); // results are on their way
      return;
    }
    if (e.key === 'ArrowDown') { e.preventDefault(); highlight(Math.min(items.length - 1, activeIdx + 1)); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); highlight(Math.max(0, activeIdx - 1)); }
    else if (e.key === 'Enter') { e.preventDefault(); if (items[activeIdx]) pick(items[activeIdx]); }
    else if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); close(); }
  });
  input.addEventListener('blur', () => setTimeout(close, 150));
  return { close };
}

function setupPeopleSearch() {
  peoplePicker({
    input: $('people-search'),
    results: $('people-results'),
    exclude: () => new Set([S.me.id]),
    onPick: async (u) => {
      try {
        const c = await client.createDirect(u.id);
        upsertConv(c);
        renderConvList();
        openConv(c.id, { focusComposer: true });
      } catch (e) { toast(errorText(e)); }
    },
  });
}

// ---------------------------------------------------------------- opening a conversation
function view(id) {
  let v = S.views.get(id);
  if (!v) S.views.set(id, (v = { msgs: new Map(), pending: new Map(), loaded: false, hasMore: true, loading: false }));
  return v;
}

const drafts = new Map(); // conv id -> unsent text
function openConv(id, { focusComposer = false, fromHash = false } = {}) {
  if (id !== null && !S.convs.has(id)) id = null;
  const changed = S.active !== id;
  if (changed && S.active !== null) {
    const text = $('composer').value;
    if (text) drafts.set(S.active, text); else drafts.delete(S.active);
  }
  S.active = id;
  if (!fromHash) {
    const h = id ? `#/c/${id}` : '#/';
    if (location.hash !== h) history.replaceState(null, '', h);
  }
  $('app').dataset.pane = id ? 'conv' : 'list';
  show($('pane-empty'), !id);
  show($('pane-conv'), !!id);
  renderConvList();
  if (!id) { $('composer-error').hidden = true; return; }
  if (changed) {
    msgEls.clear();
    $('msg-list').replaceChildren();
    $('composer').value = drafts.get(id) || '';
    autoGrow();
    show($('composer-error'), false);
    show($('jump'), false);
  }
  renderPaneHead();
  renderTyping();
  const v = view(id);
  renderMessages({ stick: true });
  if (!v.loaded) loadHistory(id, { initial: true });
  else catchUp(id);
  markActiveRead();
  if (focusComposer && window.matchMedia('(min-width: 760px)').matches) $('composer').focus();
  else if (focusComposer) $('messages').focus({ preventScroll: true });
}

function routeFromHash() {
  const m = /^#\/c\/(\d+)$/.exec(location.hash);
  openConv(m ? Number(m[1]) : null, { fromHash: true });
}

function renderPaneHead() {
  const c = S.convs.get(S.active);
  if (!c) return;
  const title = convTitle(c);
  $('pane-title').textContent = title;
  fillAvatar($('pane-avatar'), title, convAvatarKey(c));
  $('pane-avatar').classList.toggle('online', anyOnline(c));
  let sub;
  if (c.kind === 'group') {
    const n = c.members.length;
    const on = others(c).filter((m) => S.online.has(m.id)).length;
    sub = `${n} member${n === 1 ? '' : 's'}${on ? `, ${on} online` : ''}`;
  } else {
    const o = others(c)[0];
    sub = o ? `@${o.username} · ${S.online.has(o.id) ? 'online' : 'offline'}` : '';
  }
  $('pane-sub').textContent = sub;
  $('members-btn').setAttribute('aria-label', c.kind === 'group' ? 'Members' : 'Details');
}

// ---------------------------------------------------------------- history
async function loadHistory(id, { initial = false } = {}) {
  const v = view(id);
  if (v.loading || (!initial && !v.hasMore)) return;
  v.loading = true;
  renderHistoryStatus();
  const oldest = v.msgs.size ? Math.min(...v.msgs.keys()) : undefined;
  try {
    const page = await client.history(id, initial ? { limit: 50 } : { before: oldest, limit: 50 });
    for (const m of page.messages) addMessage(m, { render: false });
    if (initial) { v.loaded = true; v.hasMore = page.has_more; } else v.hasMore = page.has_more;
    if (initial && oldest !== undefined && page.messages.length && Math.min(...page.messages.map((m) => m.seq)) > oldest) {
      // live messages arrived before the first page: nothing is missing in between
      v.hasMore = page.has_more;
    }
  } catch (e) {
    if (e.code === 'not_found') { dropConv(id); return; }
    v.error = errorText(e);
  } finally {
    v.loading = false;
  }
  if (S.active !== id) return;
  renderMessages(initial ? { stick: true } : { prepend: true });
  renderHistoryStatus();
  // fill the screen when the first pages are short
  const box = $('messages');
  if (v.hasMore && box.scrollHeight <= box.clientHeight + 40) loadHistory(id);
}

// After a reconnect or on reopening: fetch anything newer than what the view shows.
async function catchUp(id) {
  const v = view(id);
  const c = S.convs.get(id);
  const newest = v.msgs.size ? Math.max(...v.msgs.keys()) : 0;
  if (!c || !v.loaded || (c.last_seq || 0) <= newest) return;
  try {
    const page = await client.history(id, { after: newest, limit: 200 });
    for (const m of page.messages) addMessage(m, { render: false });
    if (S.active === id) renderMessages();
  } catch { /* the socket's sync covers it */ }
}

function renderHistoryStatus() {
  const v = S.views.get(S.active);
  const s = $('history-status');
  if (!v) { s.textContent = ''; return; }
  if (v.loading) s.textContent = 'Loading earlier messages…';
  else if (v.error) s.textContent = v.error;
  else if (v.loaded && !v.hasMore) s.textContent = v.msgs.size ? 'This is the beginning of the conversation.' : 'No messages yet. Say hello!';
  else s.textContent = '';
  s.dataset.state = v.loading ? 'loading' : v.loaded && !v.hasMore ? 'start' : 'more';
}

// ---------------------------------------------------------------- messages
function addMessage(m, { render = true } = {}) {
  const v = view(m.conv);
  const isNew = !v.msgs.has(m.seq);
  v.msgs.set(m.seq, m);
  if (S.me && m.from === S.me.id) v.pending.delete(m.id);
  // someone who writes has read everything before (their read position moves to it)
  if (S.me && m.from !== S.me.id) bumpReceipt(m.conv, m.from, m.seq);
  if (render && S.active === m.conv) renderMessages();
  return isNew;
}

function bumpReceipt(conv, user, seq) {
  let r = S.receipts.get(conv);
  if (!r) S.receipts.set(conv, (r = new Map()));
  if ((r.get(user) || 0) < seq) { r.set(user, seq); return true; }
  return false;
}

function statusOf(c, m) {
  if (m.failed) return 'failed';
  if (m.seq === undefined) return 'pending';
  const r = S.receipts.get(c.id);
  if (r) for (const [u, seq] of r) if (u !== S.me.id && seq >= m.seq) return 'read';
  return 'sent';
}
const STATUS_LABEL = { pending: 'Sending…', sent: 'Sent', read: 'Read', failed: 'Not sent' };
const STATUS_ICON = { pending: 'clock', sent: 'check', read: 'checks', failed: 'alert' };

const msgEls = new Map(); // key -> element
function renderMessages({ stick = false, prepend = false } = {}) {
  const id = S.active;
  const c = S.convs.get(id);
  const v = S.views.get(id);
  if (!c || !v) return;
  const box = $('messages');
  const list = $('msg-list');
  const fromBottom = box.scrollHeight - box.scrollTop - box.clientHeight;
  const atBottom = fromBottom < 48;

  const msgs = [...v.msgs.values()].sort((a, b) => a.seq - b.seq);
  const pend = [...v.pending.values()].sort((a, b) => a.created - b.created);
  const all = msgs.concat(pend);
  const nodes = [];
  const keep = new Set();
  let prevDay = null;
  let prev = null;
  for (const m of all) {
    const ts = m.ts || m.created;
    const dk = dayKey(ts);
    if (dk !== prevDay) {
      const key = `day:${dk}`;
      let d = msgEls.get(key);
      if (!d) {
        d = el('div', { class: 'day', role: 'separator', 'data-testid': 'day-separator' }, el('span'));
        msgEls.set(key, d);
      }
      d.firstChild.textContent = dayLabel(ts);
      nodes.push(d);
      keep.add(key);
      prevDay = dk;
      prev = null;
    }
    const key = `m:${m.from}:${m.id}`;
    let node = msgEls.get(key);
    if (!node) { node = buildMessage(m); msgEls.set(key, node); }
    const mine = m.from === S.me.id;
    const cont = prev && prev.from === m.from && ts - (prev.ts || prev.created) < 5 * 60000;
    node.classList.toggle('cont', !!cont);
    node.querySelector('.msg-author').hidden = !!cont || mine;
    if (m.seq !== undefined) node.dataset.seq = String(m.seq); else delete node.dataset.seq;
    const t = node.querySelector('time');
    t.textContent = fmtTime.format(new Date(ts));
    t.dateTime = new Date(ts).toISOString();
    t.title = fmtFull.format(new Date(ts));
    if (mine) {
      const st = statusOf(c, m);
      if (node.dataset.status !== st) {
        node.dataset.status = st;
        const s = node.querySelector('.msg-status');
        s.replaceChildren(icon(STATUS_ICON[st]));
        s.setAttribute('aria-label', STATUS_LABEL[st]);
        s.title = STATUS_LABEL[st];
        node.querySelector('.msg-retry').hidden = st !== 'failed';
      }
    }
    nodes.push(node);
    keep.add(key);
    prev = m;
  }
  for (const [k, n] of msgEls) if (!keep.has(k)) { n.remove(); msgEls.delete(k); }
  const lastBefore = list.lastElementChild;
  reconcile(list, nodes);
  const grew = list.lastElementChild !== lastBefore;

  if (stick || (atBottom && !prepend)) box.scrollTop = box.scrollHeight;
  else if (prepend) box.scrollTop = box.scrollHeight - box.clientHeight - fromBottom;
  else if (!atBottom && grew) show($('jump'), true);
  renderHistoryStatus();
}

function buildMessage(m) {
  const mine = m.from === S.me.id;
  const node = el('div', {
    class: `msg ${mine ? 'mine' : 'theirs'}`, 'data-testid': 'message',
    dataset: { id: m.id, from: String(m.from) },
  });
  const author = el('div', { class: 'msg-author', 'data-testid': 'msg-author' });
  author.textContent = userName(m.from);
  const body = el('div', { class: 'msg-body', 'data-testid': 'msg-body' });
  body.textContent = m.body; // text, never HTML
  const meta = el('div', { class: 'msg-meta' }, el('time'));
  const retry = el('button', { type: 'button', class: 'msg-retry', 'data-testid': 'msg-retry', hidden: true, text: 'Retry' });
  if (mine) {
    meta.append(el('span', { class: 'msg-status', 'data-testid': 'msg-status', role: 'img' }));
    retry.addEventListener('click', () => retrySend(m));
  }
  node.append(author, el('div', { class: 'bubble' }, body, meta), retry);
  return node;
}

function retrySend(m) {
  const v = view(m.conv);
  const p = v.pending.get(m.id);
  if (!p) return;
  p.failed = false;
  p.created = Date.now();
  renderMessages({ stick: true });
  client.send(m.conv, m.body, { id: m.id }).catch(() => {});
}

function setupScroll() {
  const box = $('messages');
  box.addEventListener('scroll', () => {
    if (box.scrollTop < 160 && S.active) loadHistory(S.active);
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 48) { show($('jump'), false); markActiveRead(); }
  }, { passive: true });
  $('jump').addEventListener('click', () => { box.scrollTop = box.scrollHeight; show($('jump'), false); });
}

// ---------------------------------------------------------------- read state
function paneVisible() {
  return document.visibilityState === 'visible' && S.active !== null && !$('pane-conv').hidden &&
    getComputedStyle($('pane')).display !== 'none';
}

function markActiveRead() {
  const c = S.convs.get(S.active);
  if (!c || !paneVisible()) return;
  if ((c.last_read_seq || 0) < (c.last_seq || 0)) {
    c.last_read_seq = c.last_seq;
    client.markRead(c.id, c.last_seq);
    renderConvList();
  }
}

// ---------------------------------------------------------------- composer
function autoGrow() {
  const t = $('composer');
  t.style.height = 'auto';
  t.style.height = `${Math.min(t.scrollHeight, 180)}px`;
}

function setupComposer() {
  const t = $('composer');
  t.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      submitComposer();
    } else if (e.key === 'Escape' && !t.value) {
      closeActive();
    }
  });
  t.addEventListener('input', () => {
    autoGrow();
    show($('composer-error'), false);
    if (S.active && t.value) client.typing(S.active);
  });
  $('composer-form').addEventListener('submit', (e) => { e.preventDefault(); submitComposer(); t.focus(); });
}

function submitComposer() {
  const t = $('composer');
  const conv = S.active;
  const body = t.value.replace(/^\s*\n/, '').replace(/\s+$/, '');
  if (!conv || !body.trim()) return;
  if (new TextEncoder().encode(body).length > client.options.maxBodyBytes) {
    $('composer-error').textContent = `That message is too long (at most ${client.options.maxBodyBytes} bytes).`;
    show($('composer-error'), true);
    return;
  }
  t.value = '';
  drafts.delete(conv);
  autoGrow();
  client.send(conv, body).catch(() => { /* shown as failed via send_failed */ });
}

function closeActive() {
  const id = S.active;
  openConv(null);
  const b = $('conv-list').querySelector(`[data-conv-id="${id}"]`);
  if (b) b.focus();
}

// ---------------------------------------------------------------- typing indicator
let typingTimer = null;
function renderTyping() {
  const box = $('typing');
  const now = Date.now();
  const m = S.typing.get(S.active);
  const names = [];
  if (m) for (const [u, until] of m) { if (until > now) names.push(userName(u).split(/\s+/)[0]); else m.delete(u); }
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = 'Several people are typing…';
  box.textContent = text;
  box.classList.toggle('on', !!text);
  clearTimeout(typingTimer);
  if (text) typingTimer = setTimeout(renderTyping, 1000);
}

// ---------------------------------------------------------------- connection banner
function renderBanner() {
  const b = $('conn-banner');
  const st = client.state;
  b.dataset.state = st;
  const texts = {
    offline: "You're offline. Messages will be sent when you're back.",
    reconnecting: 'Connection lost. Reconnecting…',
    connecting: 'Connecting…',
  };
  b.textContent = texts[st] || '';
  show(b, st !== 'online' && !!S.me);
  $('app').dataset.conn = st;
}

// ---------------------------------------------------------------- dialogs
function setupGroupDialog() {
  const dlg = $('group-dialog');
  const picked = new Map();
  const renderChips = () => {
    $('group-chips').replaceChildren(...[...picked.values()].map((u) => el('li', { class: 'chip', 'data-testid': 'group-chip' },
      el('span', { text: displayName(u) }),
      el('button', { type: 'button', class: 'chip-x', 'aria-label': `Remove ${displayName(u)}`, text: '×', onclick: () => { picked.delete(u.id); renderChips(); $('group-search').focus(); } }))));
  };
  peoplePicker({
    input: $('group-search'), results: $('group-results'),
    exclude: () => new Set([S.me.id, ...picked.keys()]),
    label: (u) => `Add ${displayName(u)}`,
    onPick: (u) => { picked.set(u.id, u); renderChips(); },
  });
  $('new-group').addEventListener('click', () => {
    picked.clear();
    renderChips();
    $('group-title').value = '';
    $('group-search').value = '';
    show($('group-error'), false);
    dlg.showModal();
    $('group-title').focus();
  });
  $('group-cancel').addEventListener('click', () => dlg.close());
  $('group-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const title = $('group-title').value.trim();
    if (!title) { $('group-error').textContent = 'Give the group a name.'; show($('group-error'), true); $('group-title').focus(); return; }
    $('group-create').disabled = true;
    try {
      const c = await client.createGroup(title, [...picked.keys()]);
      upsertConv(c);
      dlg.close();
      openConv(c.id, { focusComposer: true });
    } catch (err) {
      $('group-error').textContent = errorText(err);
      show($('group-error'), true);
    } finally { $('group-create').disabled = false; }
  });
}

function setupMembersDialog() {
  const dlg = $('members-dialog');
  peoplePicker({
    input: $('members-search'), results: $('members-results'),
    exclude: () => new Set((S.convs.get(S.active)?.members || []).map((m) => m.id)),
    label: (u) => `Add ${displayName(u)} to the group`,
    onPick: async (u) => {
      const id = S.active;
      try {
        await client.addMember(id, u.id);
        await refetchConv(id);
        renderMembers();
      } catch (err) { membersError(errorText(err)); }
    },
  });
  $('members-btn').addEventListener('click', () => { renderMembers(); show($('members-error'), false); dlg.showModal(); $('members-close').focus(); });
  $('members-close').addEventListener('click', () => dlg.close());
  $('leave-group').addEventListener('click', async () => {
    const id = S.active;
    try {
      await client.leave(id);
      dlg.close();
      dropConv(id);
    } catch (err) { membersError(errorText(err)); }
  });
}
function membersError(msg) { $('members-error').textContent = msg; show($('members-error'), true); }

function renderMembers() {
  const c = S.convs.get(S.active);
  if (!c) return;
  const role = myRole(c);
  const manage = c.kind === 'group' && (role === 'owner' || role === 'admin');
  $('members-dialog-title').textContent = c.kind === 'group' ? `Members of ${c.title}` : 'Conversation details';
  const rows = c.members.slice().sort((a, b) => (a.id === S.me.id ? -1 : b.id === S.me.id ? 1 : displayName(a).localeCompare(displayName(b)))).map((m) => {
    const av = el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true' });
    fillAvatar(av, displayName(m), m.id);
    const on = m.id === S.me.id || S.online.has(m.id);
    const canRemove = manage && m.id !== S.me.id && m.role !== 'owner' && !(m.role === 'admin' && role !== 'owner');
    return el('li', { class: 'member', 'data-testid': 'member-row', dataset: { userId: String(m.id) } },
      el('span', { class: 'avatar-wrap' }, av, el('span', { class: `dot${on ? ' online' : ''}`, 'aria-hidden': 'true' })),
      el('span', { class: 'result-text' },
        el('span', { class: 'result-name', text: m.id === S.me.id ? `${displayName(m)} (you)` : displayName(m) }),
        el('span', { class: 'result-handle', text: `@${m.username}` })),
      m.role !== 'member' ? el('span', { class: 'role', text: m.role }) : null,
      canRemove ? el('button', {
        type: 'button', class: 'btn btn-small', 'data-testid': 'member-remove', 'aria-label': `Remove ${displayName(m)}`, text: 'Remove',
        onclick: async () => {
          try { await client.removeMember(c.id, m.id); await refetchConv(c.id); renderMembers(); } catch (err) { membersError(errorText(err)); }
        },
      }) : null);
  });
  $('members-list').replaceChildren(...rows);
  show($('members-add'), manage);
  show($('leave-group'), c.kind === 'group');
}

// ---------------------------------------------------------------- toasts
function toast(msg) {
  const t = el('div', { class: 'toast', role: 'status', text: msg });
  document.body.append(t);
  setTimeout(() => t.classList.add('out'), 3500);
  setTimeout(() => t.remove(), 4000);
}

// ---------------------------------------------------------------- SDK events
function wireClient() {
  client.on('state', () => renderBanner());
  client.on('session', (user, reason) => {
    if (user) return;
    resetState();
    setView('auth');
    setAuthMode('login');
    if (reason === 'expired') authError('Your session has ended. Please log in again.');
    else if (reason === 'logged_out_elsewhere') authError('You were logged out in another tab.');
  });
  client.on('message', (m) => {
    let c = S.convs.get(m.conv);
    if (!c) { refetchConv(m.conv); c = null; }
    if (c) {
      c.last_seq = Math.max(c.last_seq || 0, m.seq);
      if (!c.last_message || c.last_message.seq <= m.seq) c.last_message = m;
      if (m.from === S.me.id) c.last_read_seq = Math.max(c.last_read_seq || 0, m.seq);
    }
    addMessage(m, { render: true });
    const t = S.typing.get(m.conv);
    if (t && t.delete(m.from) && S.active === m.conv) renderTyping();
    if (S.active === m.conv) {
      const box = $('messages');
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 48 || m.from === S.me.id) markActiveRead();
    }
    renderConvList();
  });
  client.on('sending', (p) => {
    view(p.conv).pending.set(p.id, { ...p, seq: undefined });
    if (S.active === p.conv) renderMessages({ stick: true });
  });
  client.on('ack', (a) => {
    const v = view(a.conv);
    const p = v.pending.get(a.id);
    if (p) {
      v.pending.delete(a.id);
      addMessage({ conv: a.conv, seq: a.seq, from: S.me.id, id: a.id, body: p.body, ts: a.ts }, { render: S.active === a.conv });
      const c = S.convs.get(a.conv);
      if (c) {
        c.last_seq = Math.max(c.last_seq || 0, a.seq);
        c.last_read_seq = Math.max(c.last_read_seq || 0, a.seq);
        if (!c.last_message || c.last_message.seq <= a.seq) c.last_message = { conv: a.conv, seq: a.seq, from: S.me.id, id: a.id, body: p.body, ts: a.ts };
        renderConvList();
      }
    }
  });
  client.on('send_failed', ({ id, conv, error }) => {
    const p = view(conv).pending.get(id);
    if (p) p.failed = true;
    if (S.active === conv) {
      renderMessages();
      $('composer-error').textContent = `Not sent: ${errorText(error)}`;
      show($('composer-error'), true);
    }
  });
  client.on('presence', ({ user, online }) => {
    if (online) S.online.add(user); else S.online.delete(user);
    renderConvList();
    if (S.active) renderPaneHead();
    if ($('members-dialog').open) renderMembers();
  });
  client.on('typing', ({ conv, user }) => {
    if (user === S.me.id) return;
    let m = S.typing.get(conv);
    if (!m) S.typing.set(conv, (m = new Map()));
    m.set(user, Date.now() + 4000);
    if (S.active === conv) renderTyping();
  });
  client.on('read', ({ conv, user, seq }) => {
    if (user === S.me.id) {
      const c = S.convs.get(conv);
      if (c && (c.last_read_seq || 0) < seq) { c.last_read_seq = Math.min(seq, c.last_seq || seq); renderConvList(); }
      return;
    }
    if (bumpReceipt(conv, user, seq) && S.active === conv) renderMessages();
  });
  client.on('conversation', (c) => {
    if (!isMember(c)) { dropConv(c.id); return; }
    upsertConv(c);
    renderConvList();
    if (S.active === c.id) { renderPaneHead(); if ($('members-dialog').open) renderMembers(); }
  });
  client.on('removed', ({ conv }) => dropConv(conv));
  client.on('synced', ({ conversations }) => {
    let unknown = false;
    for (const s of conversations) {
      const c = S.convs.get(s.conv);
      if (!c) { unknown = true; continue; }
      c.last_seq = Math.max(c.last_seq || 0, s.last_seq);
      c.last_read_seq = Math.max(c.last_read_seq || 0, s.last_read_seq);
      if (!c.last_message || c.last_message.seq < c.last_seq) refetchConv(c.id);
    }
    if (unknown) loadConversations().catch(() => {});
    renderConvList();
    if (S.active) { catchUp(S.active); markActiveRead(); }
  });
  client.on('connected', () => renderBanner());
}

function resetState() {
  S.me = null;
  S.convs.clear();
  S.views.clear();
  S.receipts.clear();
  S.typing.clear();
  S.online.clear();
  S.active = null;
  drafts.clear();
  convEls.clear();
  msgEls.clear();
  $('conv-list').replaceChildren();
  $('msg-list').replaceChildren();
  history.replaceState(null, '', '#/');
}

// ---------------------------------------------------------------- main screen
async function enterMain(user) {
  S.me = user;
  S.users.set(user.id, user);
  $('me-name').textContent = displayName(user);
  $('me-handle').textContent = `@${user.username}`;
  fillAvatar($('me-avatar'), displayName(user), user.id);
  setView('main');
  renderBanner();
  try { await loadConversations(); } catch (e) { if (e.code !== 'unauthorized') toast(errorText(e)); }
  for (const p of client.pending()) view(p.conv).pending.set(p.id, { ...p, seq: undefined });
  routeFromHash();
}

function setupGlobalKeys() {
  document.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'k' && $('app').dataset.view === 'main') {
      e.preventDefault();
      $('people-search').focus();
    }
    if (e.key === 'Escape' && S.active && !document.querySelector('dialog[open]') && document.activeElement && $('pane').contains(document.activeElement) && document.activeElement !== $('composer')) {
      closeActive();
    }
  });
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') markActiveRead(); });
  window.addEventListener('hashchange', () => { if (S.me) routeFromHash(); });
  window.addEventListener('resize', () => markActiveRead());
}

async function boot() {
  setupAuth();
  setupConvListKeys();
  setupPeopleSearch();
  setupComposer();
  setupScroll();
  setupGroupDialog();
  setupMembersDialog();
  setupGlobalKeys();
  $('back').addEventListener('click', closeActive);
  $('logout').addEventListener('click', () => client.logout());
  wireClient();
  client.on('session', (user) => { if (user && (!S.me || S.me.id !== user.id)) enterMain(user); });
  let user = null;
  try { user = await client.resume(); } catch { user = null; }
  if (!user) { setView('auth'); setAuthMode('login'); $('auth-username').focus(); }
  document.documentElement.dataset.ready = 'true';
}

boot();
