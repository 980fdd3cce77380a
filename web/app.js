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
  replyTo: null, // {conv, seq} the composer answers
  uploads: [], // [{key, conv, name, type, size, loaded, att, error, promise}]
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
  more: 'M6 10a2 2 0 1 0 0 4 2 2 0 0 0 0-4zm6 0a2 2 0 1 0 0 4 2 2 0 0 0 0-4zm6 0a2 2 0 1 0 0 4 2 2 0 0 0 0-4z',
  file: 'M14 2H6a2 2 0 0 0-2 2v16a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V8l-6-6zm4 18H6V4h7v5h5v11z',
  reply: 'M10 9V5l-7 7 7 7v-4.1c5 0 8.5 1.6 11 5.1-1-5-4-10-11-11z',
  close: 'M19 6.4L17.6 5 12 10.6 6.4 5 5 6.4 10.6 12 5 17.6 6.4 19 12 13.4 17.6 19 19 17.6 13.4 12z',
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
      preview = who + previewText(lm);
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
  renderReplyBar();
  renderTray();
  closeMenu({ focus: false });
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
function loadHistory(id, opts = {}) {
  const v = view(id);
  if (v.loadingP) return v.loadingP;
  if (!opts.initial && !v.hasMore) return Promise.resolve();
  v.loadingP = loadHistoryPage(id, opts).finally(() => { v.loadingP = null; });
  return v.loadingP;
}

async function loadHistoryPage(id, { initial = false } = {}) {
  const v = view(id);
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
const laterStates = new Map(); // "conv:seq" -> a changed state that came before its message
function addMessage(m, { render = true } = {}) {
  const v = view(m.conv);
  const later = laterStates.get(`${m.conv}:${m.seq}`);
  if (later) { laterStates.delete(`${m.conv}:${m.seq}`); if ((later.mod || 0) > (m.mod || 0)) m = later; }
  const had = v.msgs.get(m.seq);
  const isNew = !had;
  // keep the newest state: a change (mod) may have reached us before this copy
  if (!had || (m.mod || 0) >= (had.mod || 0)) v.msgs.set(m.seq, m);
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
const seqEls = new Map(); // seq -> element of the open conversation
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
  seqEls.clear();
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
    fillMessage(node, m, c);
    const mine = m.from === S.me.id;
    const cont = prev && prev.from === m.from && ts - (prev.ts || prev.created) < 5 * 60000;
    node.classList.toggle('cont', !!cont);
    node.querySelector('.msg-author').hidden = !!cont || mine;
    if (m.seq !== undefined) seqEls.set(m.seq, node);
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
  const quote = el('button', { type: 'button', class: 'msg-quote', 'data-testid': 'reply-quote', hidden: true },
    el('span', { class: 'msg-quote-who' }), el('span', { class: 'msg-quote-text' }));
  quote.addEventListener('click', () => { if (node._msg && node._msg.reply_to) jumpTo(node._msg.conv, node._msg.reply_to); });
  const body = el('div', { class: 'msg-body', 'data-testid': 'msg-body' });
  body.textContent = m.body; // text, never HTML
  const atts = el('div', { class: 'msg-atts', 'data-testid': 'msg-attachments', hidden: true });
  const edited = el('span', { class: 'msg-edited', 'data-testid': 'msg-edited', hidden: true, text: 'edited' });
  const meta = el('div', { class: 'msg-meta' }, edited, el('time'));
  const retry = el('button', { type: 'button', class: 'msg-retry', 'data-testid': 'msg-retry', hidden: true, text: 'Retry' });
  if (mine) {
    meta.append(el('span', { class: 'msg-status', 'data-testid': 'msg-status', role: 'img' }));
    retry.addEventListener('click', () => retrySend(m));
  }
  const menuBtn = el('button', {
    type: 'button', class: 'msg-menu-btn', 'data-testid': 'msg-menu-button', 'aria-haspopup': 'menu', 'aria-expanded': 'false',
    'aria-label': 'Message actions', title: 'Message actions', hidden: true,
  }, icon('more'));
  menuBtn.addEventListener('click', () => { if (node._msg) openMenu(menuBtn, node._msg); });
  const bubble = el('div', { class: 'bubble' }, quote, body, atts, meta);
  const reactions = el('div', { class: 'reactions', 'data-testid': 'reactions', role: 'group', 'aria-label': 'Reactions', hidden: true });
  node.append(author, el('div', { class: 'msg-row' }, bubble, menuBtn), reactions, retry);
  // touch: a long press opens the menu; a mouse's right click too
  let press = null;
  const cancelPress = () => { clearTimeout(press); press = null; };
  bubble.addEventListener('pointerdown', (e) => {
    if (e.pointerType !== 'touch' || !node._msg || node._msg.seq === undefined) return;
    cancelPress();
    press = setTimeout(() => { press = null; if (navigator.vibrate) navigator.vibrate(10); openMenu(menuBtn, node._msg); }, 500);
  });
  for (const ev of ['pointerup', 'pointercancel', 'pointerleave', 'pointermove']) bubble.addEventListener(ev, (e) => { if (ev !== 'pointermove' || Math.abs(e.movementX) + Math.abs(e.movementY) > 4) cancelPress(); });
  bubble.addEventListener('contextmenu', (e) => {
    if (!node._msg || node._msg.seq === undefined || node._msg.deleted || window.getSelection().toString()) return;
    e.preventDefault();
    openMenu(menuBtn, node._msg);
  });
  return node;
}

// What a message shows, as one string: the node is refilled only when it changes.
function messageSig(m, c) {
  return JSON.stringify([m.seq, m.body, m.deleted, m.edited_at, m.reply_to, m.attachments, m.reactions, m.mod,
    m.reply_to ? quoteSig(c.id, m.reply_to) : null, canDelete(c, m)]);
}
function quoteSig(conv, seq) { const o = view(conv).msgs.get(seq); return o ? [o.body, o.deleted] : null; }

function fillMessage(node, m, c) {
  node._msg = m;
  const sig = messageSig(m, c);
  if (node._sig === sig) return;
  node._sig = sig;
  const mine = m.from === S.me.id;
  const deleted = !!m.deleted;
  node.classList.toggle('deleted', deleted);
  if (deleted) node.dataset.deleted = 'true'; else delete node.dataset.deleted;
  const body = node.querySelector('.msg-body');
  body.textContent = deleted ? 'Message deleted' : m.body;
  const editing = node.querySelector('.msg-edit');
  if (editing && deleted) { editing.remove(); node.classList.remove('editing'); } // nothing left to edit
  body.hidden = (!deleted && !m.body) || (!!editing && !deleted);
  node.querySelector('.msg-edited').hidden = deleted || !m.edited_at;
  if (m.edited_at) node.querySelector('.msg-edited').title = `Edited ${fmtFull.format(new Date(m.edited_at))}`;
  // the quote of the message this one answers
  const quote = node.querySelector('.msg-quote');
  quote.hidden = deleted || !m.reply_to;
  if (m.reply_to && !deleted) {
    const o = view(m.conv).msgs.get(m.reply_to);
    const who = o ? userName(o.from) : 'Earlier message';
    const text = !o ? 'Show the message this replies to' : o.deleted ? 'Message deleted' : previewText(o);
    quote.querySelector('.msg-quote-who').textContent = who;
    quote.querySelector('.msg-quote-text').textContent = text;
    quote.dataset.seq = String(m.reply_to);
    quote.setAttribute('aria-label', `Reply to ${who}: ${text}. Go to that message`);
  }
  // attachments
  const atts = node.querySelector('.msg-atts');
  const list = deleted ? [] : m.attachments || [];
  atts.hidden = !list.length;
  atts.replaceChildren(...list.map((a) => attachmentNode(a)));
  // reactions
  renderReactions(node.querySelector('.reactions'), m);
  const btn = node.querySelector('.msg-menu-btn');
  btn.hidden = deleted || m.seq === undefined;
  const who = mine ? 'your message' : `message from ${userName(m.from)}`;
  btn.setAttribute('aria-label', `Actions for ${who}`);
}

function previewText(m) {
  if (!m) return '';
  if (m.deleted) return 'Message deleted';
  const text = (m.body || '').replace(/\s+/g, ' ').trim();
  if (text) return text;
  const a = m.attachments || [];
  if (a.length === 1) return `📎 ${a[0].name || 'Attachment'}`;
  if (a.length > 1) return `📎 ${a.length} attachments`;
  return '';
}

// ---------------------------------------------------------------- reactions
const QUICK_EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢'];

function renderReactions(box, m) {
  const r = (!m.deleted && m.reactions) || {};
  const entries = Object.entries(r).filter(([, users]) => Array.isArray(users) && users.length);
  box.hidden = !entries.length;
  box.replaceChildren(...entries.map(([emoji, users]) => {
    const minePressed = users.includes(S.me.id);
    const names = users.map((u) => (u === S.me.id ? 'You' : userName(u)));
    const b = el('button', {
      type: 'button', class: `reaction${minePressed ? ' on' : ''}`, 'data-testid': 'reaction', 'data-emoji': emoji,
      'aria-pressed': String(minePressed), title: `${names.join(', ')} reacted with ${emoji}`,
      'aria-label': `${emoji} ${users.length}: ${names.join(', ')}. ${minePressed ? 'Remove your reaction' : 'React too'}`,
    }, el('span', { class: 'reaction-emoji', 'aria-hidden': 'true', text: emoji }), el('span', { class: 'reaction-count', 'data-testid': 'reaction-count', 'aria-hidden': 'true', text: String(users.length) }));
    b.addEventListener('click', () => toggleReaction(m.conv, m.seq, emoji));
    return b;
  }));
}

function toggleReaction(conv, seq, emoji) {
  const m = view(conv).msgs.get(seq);
  if (!m || m.deleted) return;
  const on = !((m.reactions && m.reactions[emoji]) || []).includes(S.me.id);
  client.react(conv, seq, emoji, on).catch((e) => toast(`Could not react: ${errorText(e)}`));
}

// ---------------------------------------------------------------- the message menu
let menuState = null; // {node, button, msg}
function canEdit(m) { return !!(S.me && m.from === S.me.id && !m.deleted && m.seq !== undefined); }
function canDelete(c, m) {
  if (!S.me || !c || m.deleted || m.seq === undefined) return false;
  if (m.from === S.me.id) return true;
  const role = myRole(c);
  return c.kind === 'group' && (role === 'owner' || role === 'admin');
}

function openMenu(button, m) {
  closeMenu();
  const c = S.convs.get(m.conv);
  if (!c || m.deleted || m.seq === undefined) return;
  const here = (m.reactions && Object.keys(m.reactions)) || [];
  const emojis = [...QUICK_EMOJI, ...here.filter((e) => !QUICK_EMOJI.includes(e))];
  const act = (fn) => () => { closeMenu({ focus: false }); fn(); };
  const item = (label, testid, fn, cls = '') => el('button', { type: 'button', role: 'menuitem', class: `menu-item ${cls}`, 'data-testid': testid, tabindex: '-1', text: label, onclick: act(fn) });
  const mineReacted = (e) => ((m.reactions && m.reactions[e]) || []).includes(S.me.id);
  const row = el('div', { class: 'menu-emoji', role: 'group', 'aria-label': 'React' }, ...emojis.map((e) => el('button', {
    type: 'button', role: 'menuitemcheckbox', class: `menu-emoji-btn${mineReacted(e) ? ' on' : ''}`, 'data-testid': 'react-option', 'data-emoji': e,
    'aria-checked': String(mineReacted(e)), 'aria-label': `React with ${e}`, tabindex: '-1', text: e,
    onclick: act(() => { toggleReaction(m.conv, m.seq, e); button.focus(); }),
  })));
  const items = [row, item('Reply', 'menu-reply', () => startReply(m))];
  if (canEdit(m)) items.push(item('Edit', 'menu-edit', () => startEdit(m)));
  if (canDelete(c, m)) items.push(item('Delete', 'menu-delete', () => confirmDelete(m), 'danger'));
  const menu = el('div', { class: 'msg-menu', id: 'msg-menu', role: 'menu', 'data-testid': 'msg-menu', 'aria-label': 'Message actions' }, ...items);
  document.body.append(menu);
  button.setAttribute('aria-expanded', 'true');
  button.setAttribute('aria-controls', 'msg-menu');
  menuState = { menu, button, msg: m };
  // place it next to the button, inside the window
  const r = button.getBoundingClientRect();
  const mw = menu.offsetWidth;
  const mh = menu.offsetHeight;
  if (window.matchMedia('(min-width: 760px)').matches) {
    // open toward the middle of the conversation: leftward from own messages, rightward from others'
    const want = m.from === S.me.id ? r.right - mw : r.left;
    const left = Math.min(window.innerWidth - mw - 8, Math.max(8, want));
    let top = r.bottom + 4;
    if (top + mh > window.innerHeight - 8) top = Math.max(8, r.top - mh - 4);
    menu.style.left = `${left}px`;
    menu.style.top = `${top}px`;
  } else {
    menu.classList.add('sheet');
  }
  const focusables = () => [...menu.querySelectorAll('[role^="menuitem"]')];
  focusables()[0].focus();
  menu.addEventListener('keydown', (e) => {
    const f = focusables();
    const i = f.indexOf(document.activeElement);
    let j = null;
    if (e.key === 'ArrowDown' || e.key === 'ArrowRight') j = (i + 1) % f.length;
    else if (e.key === 'ArrowUp' || e.key === 'ArrowLeft') j = (i - 1 + f.length) % f.length;
    else if (e.key === 'Home') j = 0;
    else if (e.key === 'End') j = f.length - 1;
    else if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); closeMenu(); return; }
    else if (e.key === 'Tab') { closeMenu({ focus: false }); return; }
    if (j === null) return;
    e.preventDefault();
    f[j].focus();
  });
}

function closeMenu({ focus = true } = {}) {
  if (!menuState) return;
  const { menu, button } = menuState;
  menuState = null;
  menu.remove();
  button.setAttribute('aria-expanded', 'false');
  button.removeAttribute('aria-controls');
  if (focus && button.isConnected) button.focus();
}

function setupMenu() {
  document.addEventListener('pointerdown', (e) => {
    if (menuState && !menuState.menu.contains(e.target) && e.target !== menuState.button && !menuState.button.contains(e.target)) closeMenu({ focus: false });
  }, true);
  window.addEventListener('resize', () => closeMenu({ focus: false }));
  $('messages').addEventListener('scroll', () => { if (menuState && !menuState.menu.classList.contains('sheet')) closeMenu({ focus: false }); }, { passive: true });
}

// ---------------------------------------------------------------- reply
function startReply(m) {
  S.replyTo = { conv: m.conv, seq: m.seq };
  renderReplyBar();
  $('composer').focus();
}
function cancelReply() { S.replyTo = null; renderReplyBar(); }
function renderReplyBar() {
  const r = S.replyTo && S.replyTo.conv === S.active ? S.replyTo : null;
  show($('reply-bar'), !!r);
  if (!r) return;
  const o = view(r.conv).msgs.get(r.seq);
  $('reply-bar-label').textContent = `Replying to ${o ? (o.from === S.me.id ? 'yourself' : userName(o.from)) : 'a message'}`;
  $('reply-bar-quote').textContent = o ? previewText(o) : '';
}

// Open a conversation at a message: load history back to it, scroll it into view, focus it.
async function jumpTo(conv, seq) {
  if (!S.convs.has(conv)) return false;
  if (S.active !== conv) openConv(conv);
  const v = view(conv);
  // a load in flight would scroll to the bottom when it lands: let it land first
  for (let i = 0; i < 100; i++) {
    if (v.loadingP) { await v.loadingP; continue; }
    if (!v.loaded) { await loadHistory(conv, { initial: true }); continue; }
    if (v.msgs.has(seq)) break;
    const oldest = v.msgs.size ? Math.min(...v.msgs.keys()) : Infinity;
    if (!v.hasMore || oldest <= seq) break;
    await loadHistory(conv);
  }
  if (S.active !== conv) return false;
  renderMessages();
  const node = seqEls.get(seq);
  if (!node) { toast('That message is no longer there.'); return false; }
  node.tabIndex = -1;
  node.scrollIntoView({ block: 'center' });
  node.focus({ preventScroll: true });
  node.classList.remove('flash');
  void node.offsetWidth; // restart the highlight animation
  node.classList.add('flash');
  setTimeout(() => node.classList.remove('flash'), 2000);
  return true;
}

// ---------------------------------------------------------------- edit
function startEdit(m) {
  const node = seqEls.get(m.seq);
  if (!node || node.querySelector('.msg-edit')) return;
  const body = node.querySelector('.msg-body');
  const input = el('textarea', { class: 'msg-edit-input', 'data-testid': 'edit-input', 'aria-label': 'Edit message', rows: '2' });
  input.value = m.body;
  const done = () => { form.remove(); body.hidden = false; node.classList.remove('editing'); node.querySelector('.msg-menu-btn').focus(); };
  const save = async () => {
    const text = input.value.replace(/\s+$/, '');
    if (!text.trim() || text === m.body) { done(); return; }
    saveBtn.disabled = true;
    try { await client.edit(m.conv, m.seq, text); done(); } catch (e) { err.textContent = `Not saved: ${errorText(e)}`; err.hidden = false; saveBtn.disabled = false; }
  };
  const saveBtn = el('button', { type: 'submit', class: 'btn btn-small btn-primary', 'data-testid': 'edit-save', text: 'Save' });
  const err = el('p', { class: 'msg-edit-error', role: 'alert', hidden: true });
  const form = el('form', { class: 'msg-edit', 'data-testid': 'edit-form', 'aria-label': 'Edit message' }, input,
    el('div', { class: 'msg-edit-actions' },
      el('span', { class: 'msg-edit-hint', text: 'Enter saves · Esc cancels' }),
      el('button', { type: 'button', class: 'btn btn-small', 'data-testid': 'edit-cancel', text: 'Cancel', onclick: done }), saveBtn), err);
  form.addEventListener('submit', (e) => { e.preventDefault(); save(); });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); save(); }
    else if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); done(); }
  });
  body.hidden = true;
  node.classList.add('editing');
  body.after(form);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

// ---------------------------------------------------------------- delete
function confirmDelete(m) {
  const dlg = $('delete-dialog');
  const back = seqEls.get(m.seq)?.querySelector('.msg-menu-btn');
  dlg.returnValue = '';
  dlg.onclose = async () => {
    dlg.onclose = null;
    if (dlg.returnValue !== 'delete') { if (back) back.focus(); return; }
    try {
      await client.deleteMessage(m.conv, m.seq);
      $('messages').focus({ preventScroll: true });
    } catch (e) { toast(`Could not delete: ${errorText(e)}`); }
  };
  dlg.showModal();
  $('delete-cancel').focus();
}

// ---------------------------------------------------------------- attachments
const INLINE_IMAGE = /^image\/(png|jpeg|gif|webp|avif|bmp)$/i;
const blobUrls = new Map(); // attachment id -> Promise(blob: URL)
function blobUrl(id) {
  if (!blobUrls.has(id)) {
    const p = client.objectUrl(id);
    p.catch(() => blobUrls.delete(id));
    blobUrls.set(id, p);
  }
  return blobUrls.get(id);
}

function fmtSize(n) {
  if (!(n >= 0)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KB`;
  return `${(n / 1048576).toFixed(1)} MB`;
}

function attachmentNode(a) {
  const name = a.name || 'file';
  if (INLINE_IMAGE.test(a.type || '')) {
    const img = el('img', { alt: name, class: 'att-img', 'data-testid': 'att-img', decoding: 'async' });
    const b = el('button', { type: 'button', class: 'att-image', 'data-testid': 'att-image', 'data-name': name, 'aria-label': `Open image ${name}` }, img);
    blobUrl(a.id).then((u) => { img.src = u; }, () => { b.classList.add('broken'); img.alt = `${name} (could not be loaded)`; });
    b.addEventListener('click', () => openImage(a, b));
    return b;
  }
  const b = el('button', { type: 'button', class: 'att-file', 'data-testid': 'att-file', 'data-name': name, 'aria-label': `Download ${name}, ${fmtSize(a.size)}`, title: `Download ${name}` },
    icon('file'), el('span', { class: 'att-file-text' },
      el('span', { class: 'att-name', 'data-testid': 'att-name', text: name }),
      el('span', { class: 'att-size', 'data-testid': 'att-size', text: fmtSize(a.size) })));
  b.addEventListener('click', () => client.download(a).catch((e) => toast(`Could not download: ${errorText(e)}`)));
  return b;
}

function openImage(a, from) {
  const dlg = $('image-dialog');
  $('image-dialog-title').textContent = a.name || 'Image';
  const img = $('image-full');
  img.alt = a.name || '';
  img.removeAttribute('src');
  blobUrl(a.id).then((u) => { img.src = u; }, () => {});
  $('image-download').onclick = () => client.download(a).catch((e) => toast(errorText(e)));
  dlg.onclose = () => { if (from && from.isConnected) from.focus(); };
  dlg.showModal();
  $('image-close').focus();
}

let uploadKeys = 0;
function addFiles(files) {
  const conv = S.active;
  if (!conv) return;
  for (const f of files) {
    if (S.uploads.filter((u) => u.conv === conv).length >= 10) { toast('At most 10 attachments per message.'); break; }
    const u = { key: ++uploadKeys, conv, name: f.name || 'file', type: f.type, size: f.size, loaded: 0, att: null, error: null };
    if (f.size > client.options.maxUploadBytes) u.error = `over ${fmtSize(client.options.maxUploadBytes)}`;
    else if (!f.size) u.error = 'empty file';
    S.uploads.push(u);
    if (!u.error) {
      u.promise = client.upload(f, { name: u.name, type: f.type || 'application/octet-stream', onProgress: ({ loaded }) => { u.loaded = loaded; renderTray(); } });
      u.promise.then((att) => { u.att = att; u.loaded = u.size; renderTray(); }, (e) => { if (e.code !== 'cancelled') u.error = errorText(e); renderTray(); });
    }
  }
  renderTray();
}

function removeUpload(u) {
  if (u.promise && !u.att) u.promise.abort();
  S.uploads = S.uploads.filter((x) => x !== u);
  renderTray();
  $('composer').focus();
}

function renderTray() {
  const tray = $('attach-tray');
  const mine = S.uploads.filter((u) => u.conv === S.active);
  show(tray, mine.length > 0);
  tray.replaceChildren(...mine.map((u) => {
    const state = u.error ? 'error' : u.att ? 'done' : 'uploading';
    const pct = u.size ? Math.round((100 * u.loaded) / u.size) : 0;
    return el('li', { class: `attach-item ${state}`, 'data-testid': 'attach-item', 'data-state': state, 'data-name': u.name },
      icon('file'),
      el('span', { class: 'attach-text' },
        el('span', { class: 'att-name', text: u.name }),
        el('span', { class: 'att-size', text: u.error ? `Not uploaded: ${u.error}` : u.att ? fmtSize(u.size) : `${pct}% of ${fmtSize(u.size)}` })),
      state === 'uploading' ? el('progress', { max: '100', value: String(pct), 'data-testid': 'upload-progress', 'aria-label': `Uploading ${u.name}` }) : null,
      el('button', { type: 'button', class: 'icon-btn attach-x', 'data-testid': 'attach-remove', 'aria-label': `Remove ${u.name}`, onclick: () => removeUpload(u) }, icon('close')));
  }));
}

function setupAttachments() {
  const input = $('file-input');
  $('attach-btn').addEventListener('click', () => input.click());
  input.addEventListener('change', () => { addFiles([...input.files]); input.value = ''; $('composer').focus(); });
  const pane = $('pane-conv');
  let depth = 0;
  const hasFiles = (e) => e.dataTransfer && [...(e.dataTransfer.types || [])].includes('Files');
  pane.addEventListener('dragenter', (e) => { if (!hasFiles(e)) return; e.preventDefault(); depth++; pane.classList.add('dropping'); });
  pane.addEventListener('dragover', (e) => { if (!hasFiles(e)) return; e.preventDefault(); e.dataTransfer.dropEffect = 'copy'; });
  pane.addEventListener('dragleave', () => { depth = Math.max(0, depth - 1); if (!depth) pane.classList.remove('dropping'); });
  pane.addEventListener('drop', (e) => {
    depth = 0;
    pane.classList.remove('dropping');
    if (!e.dataTransfer || !e.dataTransfer.files || !e.dataTransfer.files.length) return;
    e.preventDefault();
    addFiles([...e.dataTransfer.files]);
    $('composer').focus();
  });
}

// ---------------------------------------------------------------- message search
function setupMessageSearch() {
  const input = $('message-search');
  let timer = null;
  let token = 0;
  let next = null;
  let query = '';
  const close = () => {
    token++;
    show($('search-panel'), false);
    show($('conv-nav'), true);
    $('search-results').replaceChildren();
    next = null;
  };
  const run = async (more = false) => {
    const q = input.value.trim();
    if (!q) { close(); return; }
    const mine = ++token;
    if (!more) { query = q; next = null; }
    show($('search-panel'), true);
    show($('conv-nav'), false);
    $('search-status').textContent = 'Searching…';
    try {
      const page = await client.search(query, { limit: 20, before: more ? next : undefined });
      if (mine !== token) return;
      next = page.next;
      const rows = page.results.map((r) => searchRow(r, query));
      if (more) $('search-results').append(...rows); else $('search-results').replaceChildren(...rows);
      const n = $('search-results').children.length;
      $('search-status').textContent = n ? `${n}${next ? '+' : ''} message${n === 1 ? '' : 's'} found` : `No messages match “${query}”.`;
      show($('search-more'), !!next);
    } catch (e) {
      if (mine !== token) return;
      $('search-status').textContent = `Search failed: ${errorText(e)}`;
      show($('search-more'), false);
    }
  };
  input.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(() => run(false), 250); });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); clearTimeout(timer); run(false); }
    else if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); input.value = ''; close(); }
    else if (e.key === 'ArrowDown') { const f = $('search-results').querySelector('button'); if (f) { e.preventDefault(); f.focus(); } }
  });
  $('search-more').addEventListener('click', () => run(true));
  $('search-results').addEventListener('keydown', (e) => {
    const btns = [...$('search-results').querySelectorAll('button')];
    const i = btns.indexOf(document.activeElement);
    if (i < 0) return;
    if (e.key === 'ArrowDown' && btns[i + 1]) { e.preventDefault(); btns[i + 1].focus(); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); (btns[i - 1] || input).focus(); }
    else if (e.key === 'Escape') { e.preventDefault(); input.focus(); }
  });
}

// A result: where, who, when, and the text with the searched words marked (as DOM nodes, never HTML).
function searchRow(r, q) {
  const c = S.convs.get(r.conv);
  const where = c ? convTitle(c) : 'A conversation';
  const who = userName(r.from);
  const words = q.toLowerCase().split(/\s+/).filter(Boolean).map((w) => w.normalize('NFD').replace(/[\u0300-\u036f]/g, ''));
  const text = el('span', { class: 'sr-text', 'data-testid': 'search-result-body' });
  const body = r.body || '';
  const folded = body.toLowerCase().normalize('NFD').replace(/[\u0300-\u036f]/g, '');
  // marks only when folding kept the length (no composed characters split), else plain
  if (folded.length === body.length && words.length) {
    const re = new RegExp(`(${words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})`, 'g');
    let last = 0;
    for (const mt of folded.matchAll(re)) {
      text.append(body.slice(last, mt.index), el('mark', { text: body.slice(mt.index, mt.index + mt[0].length) }));
      last = mt.index + mt[0].length;
    }
    text.append(body.slice(last));
  } else text.textContent = body;
  const btn = el('button', {
    type: 'button', class: 'search-result', 'data-testid': 'search-result', dataset: { conv: String(r.conv), seq: String(r.seq) },
    'aria-label': `${who} in ${where}, ${listTime(r.ts)}: ${body}`,
  }, el('span', { class: 'sr-head' }, el('span', { class: 'sr-where', text: where }), el('time', { class: 'sr-time', text: listTime(r.ts) })),
  r.from === S.me.id || !c || c.kind === 'group' ? el('span', { class: 'sr-who', text: r.from === S.me.id ? 'You' : who }) : null, text);
  btn.addEventListener('click', async () => {
    if (!S.convs.has(r.conv)) { try { upsertConv(await client.conversation(r.conv)); renderConvList(); } catch { toast('That conversation is gone.'); return; } }
    jumpTo(r.conv, r.seq);
  });
  return el('li', {}, btn);
}

// ---------------------------------------------------------------- desktop notifications
const canNotify = () => typeof window.Notification === 'function';
function renderNotifyButton() {
  show($('notify-btn'), canNotify() && Notification.permission === 'default');
}
function setupNotifications() {
  renderNotifyButton();
  // asked for only when the user presses the button, never on load
  $('notify-btn').addEventListener('click', async () => {
    if (!canNotify()) return;
    let p = Notification.permission;
    try { p = await Notification.requestPermission(); } catch { /* old callback-only API */ }
    renderNotifyButton();
    toast(p === 'granted' ? 'Notifications are on for conversations you are not looking at.' : 'Notifications stay off.');
  });
}

function notify(m) {
  if (!canNotify() || Notification.permission !== 'granted' || !S.me || m.from === S.me.id) return;
  if (S.active === m.conv && paneVisible()) return; // the conversation is in view
  if (Date.now() - (m.ts || 0) > 120000) return; // old news caught up after a reconnect
  const c = S.convs.get(m.conv);
  const title = c && c.kind === 'group' ? `${userName(m.from)} in ${convTitle(c)}` : userName(m.from);
  try {
    const n = new Notification(title, { body: previewText(m), tag: `parley-${m.conv}` });
    n.onclick = () => { window.focus(); jumpTo(m.conv, m.seq); n.close(); };
  } catch { /* e.g. a platform that wants a service worker */ }
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
    } else if (e.key === 'Escape' && S.replyTo) {
      e.preventDefault();
      cancelReply();
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
  const ups = S.uploads.filter((u) => u.conv === conv);
  if (ups.some((u) => !u.att && !u.error)) {
    $('composer-error').textContent = 'Wait for the attachments to finish uploading.';
    show($('composer-error'), true);
    return;
  }
  const atts = ups.filter((u) => u.att).map((u) => u.att);
  if (!conv || (!body.trim() && !atts.length)) return;
  if (new TextEncoder().encode(body).length > client.options.maxBodyBytes) {
    $('composer-error').textContent = `That message is too long (at most ${client.options.maxBodyBytes} bytes).`;
    show($('composer-error'), true);
    return;
  }
  t.value = '';
  drafts.delete(conv);
  autoGrow();
  const opts = {};
  if (S.replyTo && S.replyTo.conv === conv) opts.replyTo = S.replyTo.seq;
  if (atts.length) opts.attachments = atts;
  S.uploads = S.uploads.filter((u) => u.conv !== conv);
  S.replyTo = null;
  renderReplyBar();
  renderTray();
  client.send(conv, body.trim() ? body : '', opts).catch(() => { /* shown as failed via send_failed */ });
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
    notify(m);
    const t = S.typing.get(m.conv);
    if (t && t.delete(m.from) && S.active === m.conv) renderTyping();
    if (S.active === m.conv) {
      const box = $('messages');
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 48 || m.from === S.me.id) markActiveRead();
    }
    renderConvList();
  });
  client.on('update', ({ conv, seq, message }) => {
    const v = view(conv);
    // the whole message as it now is; one this view does not hold yet waits for its msg
    if (v.msgs.has(seq)) addMessage({ ...message, conv, seq }, { render: false });
    else {
      laterStates.set(`${conv}:${seq}`, { ...message, conv, seq });
      // bounded: a view that loads later gets current states from history anyway
      if (laterStates.size > 500) laterStates.delete(laterStates.keys().next().value);
    }
    const c = S.convs.get(conv);
    if (c && c.last_message && c.last_message.seq === seq) { c.last_message = { ...c.last_message, ...message }; renderConvList(); }
    if (S.active === conv) {
      renderMessages();
      if (menuState && menuState.msg.conv === conv && menuState.msg.seq === seq && message.deleted) closeMenu({ focus: false });
      if (S.replyTo && S.replyTo.conv === conv) renderReplyBar();
    }
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
      const m = { conv: a.conv, seq: a.seq, from: S.me.id, id: a.id, body: p.body, ts: a.ts };
      if (p.reply_to !== undefined) m.reply_to = p.reply_to;
      if (p.attachments) m.attachments = p.attachments;
      if (!view(a.conv).msgs.has(a.seq)) addMessage(m, { render: S.active === a.conv });
      else if (S.active === a.conv) renderMessages();
      const c = S.convs.get(a.conv);
      if (c) {
        c.last_seq = Math.max(c.last_seq || 0, a.seq);
        c.last_read_seq = Math.max(c.last_read_seq || 0, a.seq);
        if (!c.last_message || c.last_message.seq <= a.seq) c.last_message = m;
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
  S.replyTo = null;
  for (const u of S.uploads) if (u.promise && !u.att) u.promise.abort();
  S.uploads = [];
  for (const p of blobUrls.values()) p.then((u) => URL.revokeObjectURL(u), () => {});
  blobUrls.clear();
  closeMenu({ focus: false });
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
  setupMenu();
  setupAttachments();
  setupMessageSearch();
  setupNotifications();
  setupGlobalKeys();
  $('reply-cancel').addEventListener('click', () => { cancelReply(); $('composer').focus(); });
  $('image-close').addEventListener('click', () => $('image-dialog').close());
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
