#!/usr/bin/env python3
"""The code's shape: import circles between files, the longest functions, the largest files.

    python3 .ci/shape.py [SRC]            print all three
    python3 .ci/shape.py --check [SRC]    exit 1 on an import circle or a function over MAX_FN

A file depends on another when it names an item defined there: `use` paths and qualified
paths (`crate::`, `super::`, `self::`, `mdrec::`, a child module's name), followed through
`pub use` re-exports to the file that defines the item. Declaring a module (`mod x;`) and
re-exporting (`pub use`) are not dependencies. Comments and string literals are ignored.
"""
import os
import re
import sys
from collections import defaultdict

MAX_FN = 120  # lines, signature to closing brace


def strip(text):
    """Comments and string/char literals blanked, line breaks kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith('//', i):
            j = text.find('\n', i)
            i = n if j < 0 else j
            continue
        if text.startswith('/*', i):
            j = text.find('*/', i)
            j = n if j < 0 else j + 2
            out.append('\n' * text.count('\n', i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i:i + 10])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == '_')):
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + '\n' * text.count('\n', i, j))
            i = j
            continue
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            out.append('""' + '\n' * text.count('\n', i, j))
            i = j + 1
            continue
        if c == "'":
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x..'", text[i:i + 12])
            if m:
                out.append("' '")
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return ''.join(out)


def expand_use(tree):
    """`a::{b, c::{d, e as f}}` -> [[a, b], [a, c, d], [a, c, e]]."""
    tree = re.sub(r'\s+', ' ', tree).strip()

    def split_top(s):
        parts, depth, cur = [], 0, ''
        for ch in s:
            depth += ch == '{'
            depth -= ch == '}'
            if ch == ',' and depth == 0:
                parts.append(cur)
                cur = ''
            else:
                cur += ch
        return [p.strip() for p in parts + [cur] if p.strip()]

    def rec(prefix, s):
        res = []
        for part in split_top(s):
            part = re.sub(r'\s+as\s+\w+$', '', part)
            if part.startswith('{') and part.endswith('}'):
                res += rec(prefix, part[1:-1])
                continue
            m = re.match(r'^(.*?)::\s*\{(.*)\}$', part, re.S)
            if m:
                res += rec(prefix + [x.strip() for x in m.group(1).split('::')], m.group(2))
            else:
                res.append(prefix + [x.strip() for x in part.split('::') if x.strip()])
        return res

    return rec([], tree)


def load(root):
    files = {}
    for d, _, names in os.walk(root):
        for f in names:
            if f.endswith('.rs'):
                p = os.path.join(d, f)
                with open(p) as fh:
                    files[p] = strip(fh.read())
    return files


def module_path(root, p):
    parts = os.path.relpath(p, root)[:-3].split('/')
    if parts[-1] in ('mod', 'lib', 'main'):
        parts = parts[:-1]
    return tuple(parts)


def graph(root, files):
    mods = {module_path(root, p): p for p in files if not p.endswith('main.rs')}
    defs = {p: set(re.findall(r'\b(?:struct|enum|fn|trait|type|const|static|union|mod|macro_rules!)\s+(\w+)', t))
            for p, t in files.items()}

    def resolve(segs):
        for k in range(len(segs), -1, -1):
            if tuple(segs[:k]) in mods:
                return mods[tuple(segs[:k])], segs[k:]
        return None, segs

    def absolute(segs, cur):
        if segs[0] in ('crate', 'mdrec'):
            return segs[1:]
        if segs[0] in ('super', 'self'):
            base, k = list(cur), 0
            while k < len(segs) and segs[k] in ('super', 'self'):
                if segs[k] == 'super':
                    base = base[:-1]
                k += 1
            return base + segs[k:]
        if tuple(list(cur) + [segs[0]]) in mods:
            return list(cur) + segs
        return None

    reexports = defaultdict(dict)
    for p, t in files.items():
        cur = [] if p.endswith('main.rs') else list(module_path(root, p))
        for m in re.finditer(r'\bpub(?:\([^)]*\))?\s+use\s+([^;]+);', t):
            for segs in expand_use(m.group(1)):
                a = absolute(segs, cur) if segs else None
                if a:
                    reexports[p][segs[-1]] = a

    def defining_file(a, depth=0):
        target, rest = resolve(a)
        if target and rest and rest[0] not in defs[target] and rest[0] in reexports[target] and depth < 8:
            return defining_file(reexports[target][rest[0]] + rest[1:], depth + 1)
        return target

    edges, why = defaultdict(set), defaultdict(set)
    token = re.compile(r'\bmod\s+(\w+)\s*\{|\{|\}|\b(?:pub(?:\([^)]*\))?\s+)?use\s+[^;]+;|\b\w+(?:::\w+)+')
    for p, text in files.items():
        here = [] if p.endswith('main.rs') else list(module_path(root, p))
        inline, depth = [], 0
        for m in token.finditer(text):
            t = m.group(0)
            if m.group(1):
                depth += 1
                inline.append((m.group(1), depth))
                continue
            if t == '{':
                depth += 1
                continue
            if t == '}':
                if inline and inline[-1][1] == depth:
                    inline.pop()
                depth -= 1
                continue
            cur = here + [x[0] for x in inline]
            if re.match(r'(pub(\([^)]*\))?\s+)?use\b', t):
                if t.startswith('pub') and not inline:
                    continue  # a re-export: a facade, not a dependency
                paths = expand_use(re.sub(r'^(pub(\([^)]*\))?\s+)?use\s+', '', t)[:-1])
            else:
                paths = [t.split('::')]
            for segs in paths:
                a = absolute(segs, cur) if segs else None
                target = defining_file(a) if a is not None else None
                if target and target != p:
                    edges[p].add(target)
                    why[(p, target)].add('::'.join(segs))
    return edges, why


def circles(nodes, edges):
    """Strongly connected groups of more than one file (Tarjan)."""
    sys.setrecursionlimit(10000)
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def functions(root, files):
    out = []
    for p, text in files.items():
        for m in re.finditer(r'\bfn\s+(\w+)[^;{]*?\{', text):
            depth, i = 0, m.end() - 1
            while i < len(text):
                if text[i] == '{':
                    depth += 1
                elif text[i] == '}':
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            first = text.count('\n', 0, m.start()) + 1
            last = text.count('\n', 0, i) + 1
            out.append((last - first + 1, os.path.relpath(p, root), first, m.group(1)))
    return sorted(out, reverse=True)


def main():
    args = sys.argv[1:]
    check = '--check' in args
    args = [a for a in args if a != '--check']
    root = args[0] if args else 'src'
    files = load(root)
    edges, why = graph(root, files)
    groups = circles(files, edges)
    fns = functions(root, files)
    print('== import circles (files that import each other, directly or around) ==')
    for g in groups:
        print(' <-> '.join(os.path.relpath(x, root) for x in g))
        for a in g:
            for b in sorted(edges[a]):
                if b in g:
                    names = ', '.join(sorted(why[(a, b)])[:4])
                    print('    %s -> %s  (%s)' % (os.path.relpath(a, root), os.path.relpath(b, root), names))
    if not groups:
        print('none')
    print('== longest functions (lines) ==')
    for n, path, line, name in fns[:10]:
        print('%5d  %s:%d %s' % (n, path, line, name))
    print('== largest files (lines) ==')
    sizes = []
    for p in files:
        with open(p) as fh:
            sizes.append((sum(1 for _ in fh), os.path.relpath(p, root)))
    for n, path in sorted(sizes, reverse=True)[:10]:
        print('%5d  %s' % (n, path))
    if check:
        long_fns = [f for f in fns if f[0] > MAX_FN]
        for n, path, line, name in long_fns:
            print('shape: %s:%d %s is %d lines (at most %d)' % (path, line, name, n, MAX_FN), file=sys.stderr)
        if groups:
            print('shape: %d import circle(s) in %s' % (len(groups), root), file=sys.stderr)
        if groups or long_fns:
            sys.exit(1)


if __name__ == '__main__':
    main()
