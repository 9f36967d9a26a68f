// The console is an ordinary client of the public API: the key the user signed in with, kept in sessionStorage.

const KEY = "tunegate.key";
const ROLE = "tunegate.role";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  get role() { return sessionStorage.getItem(ROLE); },
  set(key, role) { sessionStorage.setItem(KEY, key); sessionStorage.setItem(ROLE, role); },
  clear() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(ROLE); },
};

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code;
    this.param = error?.param;
  }
}

function headers(key, extra = {}) {
  return { authorization: `Bearer ${key ?? session.key}`, ...extra };
}

async function fail(response) {
  let error = null;
  try { error = (await response.json()).error; } catch { /* not JSON */ }
  return new ApiError(response.status, error);
}

export async function request(path, { method = "GET", body, key, signal } = {}) {
  const init = { method, headers: headers(key), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await fail(response);
  return response.json();
}

export const get = (path, opts) => request(path, opts);
export const post = (path, body, opts = {}) => request(path, { ...opts, method: "POST", body });
export const del = (path) => request(path, { method: "DELETE" });

// Every page of a cursor-paginated list ({data, has_more}, ?after=<last id>).
export async function listAll(path, max = 1000) {
  const out = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    out.push(...page.data);
    if (!page.has_more || !page.data.length || out.length >= max) return out;
    after = page.data[page.data.length - 1].id;
  }
}

// Upload with progress (fetch has no upload progress; XMLHttpRequest does).
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("authorization", `Bearer ${session.key}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body?.error));
    };
    xhr.onerror = () => reject(new ApiError(0, { message: "network error" }));
    xhr.send(form);
  });
}

// Server-sent events of a streamed completion, parsed: yields each data object until [DONE].
export async function* stream(path, body, signal) {
  const response = await fetch(path, {
    method: "POST", signal, headers: headers(null, { "content-type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!response.ok) throw await fail(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(500, parsed.error);
        yield parsed;
      }
    }
  }
}

// The first ``n`` lines of a file's content, read from the stream and then cancelled (large files stay unread).
export async function headLines(path, n) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await fail(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (text.split("\n").length <= n) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  reader.cancel().catch(() => {});
  return text.split("\n").slice(0, n).filter((line) => line.trim());
}

export async function text(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await fail(response);
  return response.text();
}

// Saves a file the API serves behind the key (a plain link could not send the Authorization header).
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await fail(response);
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
