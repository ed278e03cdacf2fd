#!/usr/bin/env python3
"""Where a process's resident memory is, mapping by mapping, for the suite's rows (issue 18 item 5).

    Launch/smaps-sample.py BIN T0 COMMAND...      e.g.
    Launch/smaps-sample.py .build/release/starling 1.0 mpirun -np 2 --bind-to none .build/release/starling \
        bench --suite --quick --entries unet-128-w0.25 --threads 1

Runs COMMAND and reads /proc/PID/smaps of each of its descendants running BIN every DT seconds (environment, default
0.05; the reading slows the run, so take speeds elsewhere). For each process it prints the first sample after T0
seconds and the sample of highest Rss: Rss, PSS, anonymous, file-backed and shared MB grouped by library (the binary,
[heap], anonymous mappings), the largest anonymous mappings (Starling's large blocks, oneDNN's arenas and JIT code,
OpenBLAS's buffers, glibc's heaps, thread stacks), the threads, and Rss over time. BENCHMARKS.md, "What a rank holds
besides the model"."""
import os, sys, time, subprocess, re, collections, json

def parse(pid):
    maps = []
    try:
        with open(f"/proc/{pid}/smaps") as f:
            cur = None
            for line in f:
                if re.match(r'^[0-9a-f]+-[0-9a-f]+ ', line):
                    parts = line.split(None, 5)
                    a, b = (int(x, 16) for x in parts[0].split('-'))
                    name = parts[5].strip() if len(parts) > 5 else ''
                    cur = {'start': a, 'size': b - a, 'perm': parts[1], 'name': name}
                    maps.append(cur)
                else:
                    k, _, v = line.partition(':')
                    v = v.strip()
                    if v.endswith(' kB'):
                        cur[k] = int(v[:-3])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return maps

def rss(maps): return sum(m.get('Rss', 0) for m in maps)

def group(m):
    n = m['name']
    if n.startswith('/'):
        b = os.path.basename(n)
        if n == binpath: return 'the binary'
        if n.startswith('/dev/shm') or 'vader' in n or 'shared_mem' in n: return 'shm:' + re.sub(r'\d+', '#', b)
        b = re.sub(r'\.so.*', '.so', b)
        return b
    if n in ('[heap]', '[stack]', '[vdso]', '[vvar]', '[vsyscall]'): return n
    if n.startswith('[anon'): return n
    return 'anon'

def summary(maps, title):
    g = collections.defaultdict(lambda: collections.Counter())
    for m in maps:
        k = group(m)
        c = g[k]
        c['rss'] += m.get('Rss', 0); c['pss'] += m.get('Pss', 0); c['anon'] += m.get('Anonymous', 0)
        c['shared'] += m.get('Shared_Clean', 0) + m.get('Shared_Dirty', 0); c['n'] += 1; c['size'] += m['size'] // 1024
    tot = collections.Counter()
    for c in g.values(): tot.update(c)
    print(f"== {title}: Rss {tot['rss']/1024:.1f} MB, Pss {tot['pss']/1024:.1f} MB, anon {tot['anon']/1024:.1f} MB, file {(tot['rss']-tot['anon'])/1024:.1f} MB, shared {tot['shared']/1024:.1f} MB")
    for k, c in sorted(g.items(), key=lambda kv: -kv[1]['rss']):
        if c['rss'] < 200: continue
        print(f"   {k:48s} rss {c['rss']/1024:7.1f} pss {c['pss']/1024:7.1f} anon {c['anon']/1024:7.1f} shared {c['shared']/1024:6.1f} maps {c['n']:4d} vsz {c['size']/1024:9.1f}")
    anon = [m for m in maps if not m['name'].startswith('/') and m.get("Rss", 0) >= 64]
    print("   largest anonymous mappings (size MB, rss MB, perm, name):")
    for m in sorted(anon, key=lambda m: -m.get("Rss", 0))[:40]:
        print(f"     {m['start']:#x} size {m['size']/1048576:10.2f} rss {m.get('Rss',0)/1024:7.2f} {m['perm']} {m['name']}")

if __name__ == '__main__':
    binpath = os.path.realpath(sys.argv[1]); t0 = float(sys.argv[2]); cmd = sys.argv[3:]
    dt = float(os.environ.get('DT', '0.05'))
    proc = subprocess.Popen(cmd)
    start = time.time()
    best, early, timeline, bthreads = {}, {}, collections.defaultdict(list), {}
    while proc.poll() is None:
        now = time.time() - start
        for p in os.listdir('/proc'):
            if not p.isdigit(): continue
            try:
                if os.path.realpath(f'/proc/{p}/exe') != binpath: continue
            except OSError: continue
            q, mine = p, False
            for _ in range(6):
                try: q = open(f'/proc/{q}/stat').read().rsplit(')', 1)[1].split()[1]
                except OSError: break
                if int(q) == proc.pid: mine = True; break
                if q in ('0', '1'): break
            if not mine and int(p) != proc.pid: continue
            maps = parse(p)
            if not maps: continue
            r = rss(maps)
            timeline[p].append((round(now, 2), r // 1024))
            if p not in best or r > best[p][0]:
                try: threads = sorted(open(f'/proc/{p}/task/{t}/comm').read().strip() for t in os.listdir(f'/proc/{p}/task'))
                except OSError: threads = []
                best[p] = (r, now, maps); bthreads[p] = threads
            if p not in early and now >= t0: early[p] = (r, now, maps)
        time.sleep(dt)
    for p in sorted(best):
        if p in early: summary(early[p][2], f"pid {p} first sample after {t0}s (t={early[p][1]:.2f}s)")
        summary(best[p][2], f"pid {p} highest Rss sample (t={best[p][1]:.2f}s)")
        print("   threads at the highest sample:", len(bthreads.get(p, [])), ' '.join(bthreads.get(p, [])))
        tl = timeline[p]; print("   timeline (s, MB):", ' '.join(f"{t}:{m}" for t, m in tl[::max(1, len(tl)//40)]))
    sys.exit(proc.returncode)
