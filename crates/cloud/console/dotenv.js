// `.env` text as `berth seal` reads it (envseal's dialect, see
// crates/envseal/src/dotenv.rs): blank lines and `#` lines skipped,
// `export ` allowed, whitespace around `=` ignored, unquoted values end at
// a `#` after whitespace, 'single quotes' literal and multi-line,
// "double quotes" multi-line with \n \r \t \" \\ escapes, nothing after a
// closing quote but a comment, and `$` never special. Errors name the line
// and the key, never a value.

function findClosing(s, q) {
  let escaped = false;
  for (let i = 0; i < s.length; i += 1) {
    const c = s[i];
    if (escaped) escaped = false;
    else if (q === '"' && c === '\\') escaped = true;
    else if (c === q) return i;
  }
  return -1;
}

function unescapeDouble(s) {
  let out = '';
  for (let i = 0; i < s.length; i += 1) {
    const c = s[i];
    if (c !== '\\') {
      out += c;
      continue;
    }
    i += 1;
    const n = s[i];
    if (n === 'n') out += '\n';
    else if (n === 'r') out += '\r';
    else if (n === 't') out += '\t';
    else if (n === '"') out += '"';
    else if (n === '\\') out += '\\';
    else if (n === undefined) out += '\\';
    else out += `\\${n}`;
  }
  return out;
}

function stripComment(raw) {
  for (let i = 1; i < raw.length; i += 1) {
    if (raw[i] === '#' && (raw[i - 1] === ' ' || raw[i - 1] === '\t')) return raw.slice(0, i);
  }
  return raw;
}

const stripCr = (l) => (l.endsWith('\r') ? l.slice(0, -1) : l);

/** Parses `.env` text into [{key, value, line}]; throws Error(sentence). */
export function parseDotenv(text) {
  const lines = text.split('\n');
  const vars = [];
  const seen = new Set();
  let i = 0;
  while (i < lines.length) {
    const lineNo = i + 1;
    const line = stripCr(lines[i]);
    i += 1;
    const trimmed = line.replace(/^\s+/, '');
    if (!trimmed || trimmed.startsWith('#')) continue;
    let rest = trimmed;
    const ex = /^export[ \t]/.exec(trimmed);
    if (ex) rest = trimmed.slice(ex[0].length).replace(/^\s+/, '');
    const eq = rest.indexOf('=');
    if (eq < 0) throw new Error(`line ${lineNo}: expected KEY=VALUE, found a line without \`=\``);
    const key = rest.slice(0, eq).replace(/\s+$/, '');
    if (!key) throw new Error(`line ${lineNo}: the line starts with \`=\`; a variable name must come first`);
    const raw = rest.slice(eq + 1).replace(/^[ \t]+/, '');
    let value;
    const q = raw[0];
    if (q === "'" || q === '"') {
      let buf = '';
      let cur = raw.slice(1);
      let after;
      for (;;) {
        const end = findClosing(cur, q);
        if (end >= 0) {
          buf += cur.slice(0, end);
          after = cur.slice(end + 1);
          break;
        }
        buf += cur;
        if (i >= lines.length) throw new Error(`line ${lineNo}: the quoted value of \`${key}\` is never closed`);
        buf += '\n';
        cur = stripCr(lines[i]);
        i += 1;
      }
      after = after.replace(/^\s+/, '');
      if (after && !after.startsWith('#')) {
        throw new Error(`line ${lineNo}: unexpected text after the closing quote of \`${key}\``);
      }
      value = q === '"' ? unescapeDouble(buf) : buf;
    } else {
      value = stripComment(raw).replace(/\s+$/, '');
    }
    if (seen.has(key)) throw new Error(`line ${lineNo}: \`${key}\` is defined twice`);
    seen.add(key);
    vars.push({ key, value, line: lineNo });
  }
  return vars;
}
