#!/usr/bin/env python3
"""Fails when, inside a crate, modules that are siblings use each other in a
cycle (`a` uses `b` and `b` uses `a`, or longer). What two modules share
belongs in a third one that both use (see ARCHITECTURE.md, `scripts/`).

An edge `a -> b` is any path `crate::…` or `super::…` in `a`'s code (its
files and submodules, not its `#[cfg(test)]` modules) that names `b` or
something inside `b`; a path through a `pub use` re-export counts for the
module the item comes from. Edges are drawn between the two siblings under
the closest common parent: `pull::blobs` using `client` is `pull -> client`.

Usage: scripts/module-cycles.py [CRATE_DIR ...]   (default: crates/*)

A cycle not broken yet is listed in scripts/module-cycles.allow (crate
folder, then the cycle's modules, then why); a listed cycle that grew, or
that is gone, fails too, so the list only shrinks.
"""

import glob
import os
import re
import sys


def strip_comments_and_strings(src):
    """Source with comments, string and char literals blanked out."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (m := re.match(r'b?r(#*)"', src[i:i + 260])) and (
            i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")
        ):
            end = '"' + m.group(1)
            j = src.find(end, i + m.end())
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and (m := re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|[^\\'])'", src[i:i + 12])):
            i += m.end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_modules(code):
    """Code without `#[cfg(test)] mod x { … }` blocks."""
    while (m := re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", code)):
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        code = code[: m.start()] + code[i:]
    return code


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]; `self` names the prefix,
    `x as y` is `x@y`."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+", "@", tree))
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix, inner = tree[:i], tree[i + 1:tree.rindex("}")]
                parts, d, start = [], 0, 0
                for j, c in enumerate(inner):
                    d += {"{": 1, "}": -1}.get(c, 0)
                    if c == "," and d == 0:
                        parts.append(inner[start:j])
                        start = j + 1
                parts.append(inner[start:])
                out = []
                for p in parts:
                    if not p:
                        continue
                    for e in expand_use_tree(p):
                        out.append(prefix.rstrip(":") if e == "self" else prefix + e)
                return out
            depth += 1
    return [tree]


def modules_of(src_dir):
    """{module path tuple: [files]} for a crate's src folder."""
    mods = {}
    for path in glob.glob(os.path.join(src_dir, "**", "*.rs"), recursive=True):
        rel = os.path.relpath(path, src_dir)[:-3].split(os.sep)
        if rel in (["lib"], ["main"]):
            key = ()
        elif rel[-1] == "mod":
            key = tuple(rel[:-1])
        else:
            key = tuple(rel)
        mods.setdefault(key, []).append(path)
    # Files pulled in with #[path] (tests of a module) are not modules of their own.
    for key, files in list(mods.items()):
        for f in files:
            with open(f) as fh:
                for m in re.finditer(r'#\[path\s*=\s*"([^"]+)"\]', fh.read()):
                    target = os.path.normpath(os.path.join(os.path.dirname(f), m.group(1)))
                    for k2, f2 in list(mods.items()):
                        if target in f2 and k2 != key:
                            del mods[k2]
    return mods


def crate_edges(src_dir):
    mods = modules_of(src_dir)
    codes = {}
    for key, files in mods.items():
        text = ""
        for f in files:
            with open(f) as fh:
                text += drop_test_modules(strip_comments_and_strings(fh.read())) + "\n"
        codes[key] = text

    # Re-exports: module -> name -> module the item comes from.
    reexports = {}
    for key, code in codes.items():
        for m in re.finditer(r"\bpub(\([^)]*\))?\s+use\s+([^;]+);", code):
            for path in expand_use_tree(m.group(2)):
                segs = [s for s in path.split("::") if s]
                name = segs[-1].split("@")[-1] if segs else None
                target = resolve(key, [s.split("@")[0] for s in segs], mods, {})
                if name and name != "*" and target is not None:
                    reexports.setdefault(key, {})[name] = target

    edges = {}
    for key, code in codes.items():
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            paths += expand_use_tree(m.group(1))
        paths += re.findall(r"\b(?:crate|super)(?:::(?:super|\w+))+", code)
        for path in paths:
            segs = [s.split("@")[0] for s in path.split("::") if s]
            if not segs or segs[0] not in ("crate", "super"):
                continue
            target = resolve(key, segs, mods, reexports)
            if target is None:
                continue
            common = 0
            while common < min(len(key), len(target)) and key[common] == target[common]:
                common += 1
            if common == len(key) or common == len(target):
                continue  # an ancestor or a descendant, not a sibling
            a, b = key[: common + 1], target[: common + 1]
            edges.setdefault(a, {}).setdefault(b, set()).add(
                (os.path.relpath(mods[key][0]), "::".join(segs))
            )
    return edges


def resolve(key, segs, mods, reexports, seen=None):
    """The module a path names (or the module its item lives in)."""
    if segs[0] == "crate":
        cur, rest = (), segs[1:]
    elif segs[0] == "super":
        cur, rest = key, segs
        while rest and rest[0] == "super":
            if not cur:
                return None
            cur, rest = cur[:-1], rest[1:]
    elif segs[0] == "self":
        cur, rest = key, segs[1:]
    elif key + (segs[0],) in mods:
        cur, rest = key, segs  # `use child::…` (2018 paths)
    else:
        return None
    seen = seen or set()
    for s in rest:
        if cur + (s,) in mods:
            cur = cur + (s,)
        elif s in reexports.get(cur, {}) and (cur, s) not in seen:
            seen.add((cur, s))
            return reexports[cur][s]
        else:
            break
    return cur


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


ALLOW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "module-cycles.allow")


def allowed_cycles():
    """{(crate folder, frozenset of module names)} from module-cycles.allow."""
    out = set()
    if os.path.exists(ALLOW):
        with open(ALLOW) as fh:
            for line in fh:
                words = line.split("#", 1)[0].split("--", 1)[0].split()
                if len(words) >= 3:
                    out.add((os.path.normpath(words[0]), frozenset(words[1:])))
    return out


def main():
    crates = sys.argv[1:] or sorted(glob.glob("crates/*"))
    sys.setrecursionlimit(10000)
    failed = False
    checked = 0
    allowed = allowed_cycles()
    seen_allowed = set()
    listed = []
    for crate in crates:
        src = os.path.join(crate, "src")
        if not os.path.isdir(src):
            continue
        checked += 1
        edges = crate_edges(src)
        for comp in sccs(edges):
            names = ["::".join(c) for c in comp]
            entry = (os.path.normpath(crate), frozenset(names))
            if entry in allowed:
                seen_allowed.add(entry)
                listed.append(f"{crate}: {' '.join(names)}")
                continue
            failed = True
            print(f"error: {crate}: modules {', '.join(names)} use each other:")
            members = set(comp)
            for a in comp:
                for b in sorted(edges.get(a, {})):
                    if b in members:
                        file, path = sorted(edges[a][b])[0]
                        more = len(edges[a][b]) - 1
                        extra = f" (and {more} more)" if more else ""
                        print(f"  {'::'.join(a)} -> {'::'.join(b)}: {file} uses {path}{extra}")
    checked_dirs = {os.path.normpath(c) for c in crates}
    for crate, mods in sorted(allowed - seen_allowed):
        if crate in checked_dirs:
            failed = True
            print(
                f"error: {crate}: the cycle {' '.join(sorted(mods))} listed in "
                "scripts/module-cycles.allow is gone (or changed): update the list"
            )
    if failed:
        print("What sibling modules share goes into a module both use (see ARCHITECTURE.md).")
        sys.exit(1)
    if listed:
        print(f"module cycles: none new in {checked} crates; still listed in module-cycles.allow:")
        for line in listed:
            print(f"  {line}")
    else:
        print(f"module cycles: none in {checked} crates")


if __name__ == "__main__":
    main()
