// The lookahead-rag page: asks POST /v1/rag, reads its server-sent events and shows the answer
// one chunk per forward pass (shaded by the drafted tokens that pass accepted), the request's
// lookahead figures, the sources with their text, and, when asked, a plain-decoding answer
// beside it. Plain script, no build step; text from the server always goes in as text, never
// as HTML.
"use strict";

// A common substring shorter than this is more often chance than quotation.
const QUOTE_MIN_CHARS = 24;

const $ = (id) => document.getElementById(id);

// The API key, once the service has asked for one: this page's memory only, sent only as the
// Authorization header (never stored, never put in a URL or a body).
let apiKey = null;
let runs = []; // the requests of the latest question: one, or two when comparing

function requestBody() {
  const body = { question: $("question").value, stream: true };
  const settings = { max_tokens: "max-tokens", temperature: "temperature", top_k: "top-k" };
  for (const [field, id] of Object.entries(settings)) {
    const value = $(id).value.trim();
    if (value !== "") body[field] = Number(value); // a bad value: the API says what is wrong
  }
  return body;
}

function headers() {
  const out = { "content-type": "application/json" };
  if (apiKey !== null) out.authorization = `Bearer ${apiKey}`;
  return out;
}

// The API's own error message, or what the status line says when the body is not one.
async function apiMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch {
    // not JSON: fall through
  }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

// The JSON payloads of a server-sent event stream, up to `data: [DONE]`.
async function* serverEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data === "[DONE]") return;
        if (data) yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// For each character of `answer`, the index of the first passage that holds a common substring
// of at least `min` characters covering it, else -1 (longest common substrings by dynamic
// programming: answer x passage, a few million steps at most).
function quotedSpans(answer, passages, min = QUOTE_MIN_CHARS) {
  const owner = new Int32Array(answer.length).fill(-1);
  passages.forEach((passage, k) => {
    let previous = new Int32Array(passage.length + 1);
    let current = new Int32Array(passage.length + 1);
    for (let i = 0; i < answer.length; i++) {
      const code = answer.charCodeAt(i);
      let longest = 0; // of the common substrings ending at answer[i]
      for (let j = 0; j < passage.length; j++) {
        const run = code === passage.charCodeAt(j) ? previous[j] + 1 : 0;
        current[j + 1] = run;
        if (run > longest) longest = run;
      }
      if (longest >= min) {
        for (let x = i - longest + 1; x <= i; x++) if (owner[x] < 0) owner[x] = k;
      }
      [previous, current] = [current, previous];
    }
  });
  return owner;
}

// For each character of `answer`, the source number of the `[n]` marker it belongs to, else 0.
function citations(answer, count) {
  const cited = new Int32Array(answer.length);
  for (const match of answer.matchAll(/\[(\d{1,3})\]/g)) {
    const n = Number(match[1]);
    if (n >= 1 && n <= count) cited.fill(n, match.index, match.index + match[0].length);
  }
  return cited;
}

function chunkElement(chunk) {
  const span = document.createElement("span");
  const perStep = Math.floor(chunk.accepted / chunk.steps);
  span.className = `chunk a${Math.min(perStep, 4)}`;
  span.dataset.steps = chunk.steps;
  span.dataset.tokens = chunk.tokens;
  span.dataset.accepted = chunk.accepted;
  span.title =
    chunk.steps === 1
      ? `${chunk.tokens} token(s) from one forward pass: ${chunk.accepted} drafted and accepted`
      : `${chunk.tokens} tokens from ${chunk.steps} forward passes (text held back until the ` +
        `last): ${chunk.accepted} drafted and accepted`;
  return span;
}

// The nodes for answer[from:to]: plain text, quoted runs and citation links.
function segments(answer, from, to, owner, cited, sources) {
  const nodes = [];
  let start = from;
  for (let i = from + 1; i <= to; i++) {
    if (i < to && owner[i] === owner[start] && cited[i] === cited[start]) continue;
    const text = answer.slice(start, i);
    if (cited[start] > 0) {
      const link = document.createElement("a");
      link.className = "cite";
      link.href = `#source-${cited[start]}`;
      link.textContent = text;
      nodes.push(link);
    } else if (owner[start] >= 0) {
      const mark = document.createElement("mark");
      mark.className = "quote";
      mark.dataset.source = owner[start] + 1;
      mark.title = `verbatim in [${owner[start] + 1}] ${sources[owner[start]].title}`;
      mark.textContent = text;
      nodes.push(mark);
    } else {
      nodes.push(document.createTextNode(text));
    }
    start = i;
  }
  return nodes;
}

function showSources(sources, indexVersion) {
  const list = $("sources");
  if (list.childElementCount) return; // the compared request retrieved the same ones
  // The index version the passages came from (the corpus can change while the service runs).
  $("index-version").textContent = indexVersion == null ? "" : `index version ${indexVersion}`;
  list.replaceChildren(
    ...sources.map((source, i) => {
      const item = document.createElement("li");
      item.id = `source-${i + 1}`;
      const title = document.createElement("span");
      title.className = "source-title";
      title.textContent = source.title || "(untitled)";
      const meta = document.createElement("span");
      meta.className = "source-meta";
      const id = document.createElement("code");
      id.textContent = source.id;
      meta.append(id, ` · ${source.source} · score ${source.score.toFixed(3)}`);
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = "passage text";
      const passage = document.createElement("p");
      passage.className = "passage";
      passage.textContent = source.text;
      details.append(summary, passage);
      item.append(title, meta, details);
      return item;
    }),
  );
  $("sources-section").hidden = sources.length === 0;
}

function showError(message) {
  const error = $("error");
  if (!error.hidden && error.textContent.split("\n").includes(message)) return;
  error.textContent = error.hidden ? message : `${error.textContent}\n${message}`;
  error.hidden = false;
}

const UNAUTHORIZED = "unauthorized";

// One request to /v1/rag and its panel.
class Run {
  constructor(title, body) {
    this.body = body;
    this.controller = new AbortController();
    this.panel = $("panel-template").content.firstElementChild.cloneNode(true);
    this.panel.querySelector(".panel-title").textContent = title;
    this.panel.dataset.lookahead = body.lookahead;
    this.stopButton = this.panel.querySelector(".stop");
    this.stopButton.addEventListener("click", () => this.stop());
    this.answer = this.panel.querySelector(".answer");
    this.chunks = []; // {text, steps, tokens, accepted}: one per piece of released text
    this.held = { steps: 0, tokens: 0, accepted: 0 }; // steps whose text is not released yet
    this.totals = { steps: 0, tokens: 0, accepted: 0 };
    this.sources = [];
    this.end = null;
    this.message = null; // why it failed
    $("answers").append(this.panel);
  }

  get running() {
    return ["waiting", "running"].includes(this.panel.dataset.state);
  }

  stop() {
    this.controller.abort();
  }

  setState(state, status) {
    this.panel.dataset.state = state;
    this.panel.querySelector(".status").textContent = status;
  }

  // Resolves when the request is over: its outcome, UNAUTHORIZED when it needs a key.
  async go() {
    this.started = performance.now();
    try {
      const response = await fetch("/v1/rag", {
        method: "POST",
        headers: headers(),
        body: JSON.stringify(this.body),
        signal: this.controller.signal,
      });
      if (response.status === 401) {
        this.message = await apiMessage(response);
        this.setState("failed", "needs an API key");
        return UNAUTHORIZED;
      }
      if (!response.ok) {
        this.message = await apiMessage(response);
        this.setState("failed", "refused");
        showError(this.message);
        return "failed";
      }
      this.setState("running", "retrieving and decoding…");
      for await (const payload of serverEvents(response.body)) this.handle(payload);
      if (this.running) this.fail("the stream ended before the answer did");
    } catch (error) {
      if (this.controller.signal.aborted) this.setState("stopped", "stopped");
      else this.fail(`could not reach the service: ${error.message}`);
    } finally {
      this.stopButton.disabled = true;
      this.decorate();
    }
    return this.panel.dataset.state;
  }

  handle(payload) {
    if (payload.error) {
      this.fail(payload.error.message);
    } else if (payload.type === "start") {
      this.sources = payload.sources;
      showSources(payload.sources, payload.index_version);
      $("legend").hidden = false;
    } else if (payload.type === "queued") {
      this.setState("running", `queued: ${payload.ahead} requests ahead`);
    } else if (payload.type === "delta") {
      this.step(payload);
    } else if (payload.type === "end") {
      this.end = payload;
      this.setState("done", `done (${payload.finish_reason})`);
      this.showFigures();
    }
  }

  fail(message) {
    this.message = message;
    this.setState("failed", "failed");
    const box = this.panel.querySelector(".panel-error");
    box.textContent = message;
    box.hidden = false;
  }

  // One decoding step. A step whose text is held back (text "") still counts; its tokens go
  // with the next piece of text released.
  step({ text, tokens, accepted_tokens: accepted }) {
    if (this.totals.steps === 0) this.setState("running", "streaming");
    for (const counts of [this.totals, this.held]) {
      counts.steps += 1;
      counts.tokens += tokens;
      counts.accepted += accepted;
    }
    if (text) {
      const chunk = { text, ...this.held };
      this.chunks.push(chunk);
      const span = chunkElement(chunk);
      span.textContent = text;
      this.answer.append(span);
      this.held = { steps: 0, tokens: 0, accepted: 0 };
    }
    this.showFigures();
  }

  figure(name, value) {
    this.panel.querySelector(`[data-figure="${name}"]`).textContent = value;
  }

  showFigures() {
    const { steps, tokens, accepted } = this.totals;
    this.figure("steps", steps);
    this.figure("tokens", tokens);
    this.figure("tokens-per-step", steps ? (tokens / steps).toFixed(2) : "–");
    this.figure("accepted", accepted);
    if (this.end === null) {
      const seconds = (performance.now() - this.started) / 1000;
      this.figure("speed", `${(tokens / seconds).toFixed(1)} tokens/s so far`);
      return;
    }
    const stats = this.end.stats;
    const perStep = stats.steps ? stats.draft_tokens / stats.steps : 0;
    this.figure("draft-per-step", perStep.toFixed(1));
    this.figure("accepted", `${stats.accepted_tokens} of ${stats.draft_tokens} drafted`);
    this.figure("speed", `${this.speed().toFixed(1)} tokens/s`);
    this.figure("finish", this.end.finish_reason);
  }

  // Tokens per second of decoding, as the server measured it (prefill and every step).
  speed() {
    return this.end.usage.completion_tokens / this.end.stats.decode_seconds;
  }

  get text() {
    return this.chunks.map((chunk) => chunk.text).join("");
  }

  // The answer again, now whole: the same chunks, with citations linked and quotes marked.
  decorate() {
    const answer = this.text;
    if (!answer) return;
    const owner = quotedSpans(answer, this.sources.map((source) => source.text ?? ""));
    const cited = citations(answer, this.sources.length);
    let at = 0;
    const spans = this.chunks.map((chunk) => {
      const span = chunkElement(chunk);
      span.append(...segments(answer, at, at + chunk.text.length, owner, cited, this.sources));
      at += chunk.text.length;
      return span;
    });
    this.answer.replaceChildren(...spans);
  }
}

function compare([lookahead, plain]) {
  const line = $("comparison");
  if (!plain || !lookahead.end || !plain.end) return;
  const ratio = lookahead.speed() / plain.speed();
  const same = lookahead.text === plain.text;
  line.textContent =
    `Lookahead ${lookahead.speed().toFixed(1)} tokens/s, plain ${plain.speed().toFixed(1)} ` +
    `tokens/s: ${ratio.toFixed(2)}× ` +
    (same ? "for the same answer." : "(the answers differ: sampled answers are separate draws).");
  line.hidden = false;
}

function stopAll() {
  for (const run of runs) run.stop();
}

function askForKey(reason) {
  $("key-reason").textContent =
    apiKey === null ? `This service needs an API key: ${reason}` : `The key was refused: ${reason}`;
  $("key-form").hidden = false;
  $("api-key").focus();
}

async function ask(event) {
  if (event) event.preventDefault();
  stopAll();
  for (const id of ["error", "comparison", "key-form", "legend", "sources-section"]) {
    $(id).hidden = true;
  }
  $("error").textContent = "";
  $("sources").replaceChildren();
  $("answers").replaceChildren();
  const body = requestBody();
  const asked = [new Run("Lookahead", { ...body, lookahead: true })];
  if ($("compare").checked) {
    asked.push(new Run("Lookahead off (plain decoding)", { ...body, lookahead: false }));
  }
  runs = asked;
  $("stop-all").disabled = false;
  const outcomes = await Promise.all(asked.map((run) => run.go()));
  if (runs !== asked) return; // a newer question took over
  $("stop-all").disabled = true;
  const unauthorized = asked.find((run, i) => outcomes[i] === UNAUTHORIZED);
  if (unauthorized) askForKey(unauthorized.message);
  compare(asked);
}

$("ask-form").addEventListener("submit", ask);
$("stop-all").addEventListener("click", stopAll);
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) ask(event);
});
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  $("api-key").value = ""; // the only copy is the variable
  if (!key) return;
  apiKey = key;
  ask();
});
