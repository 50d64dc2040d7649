#!/usr/bin/env python3
"""Repeated daemon starts: time from spawn to READY=1 (sd_notify), RSS at READY and after an
idle wait. The work directory comes from the harness with every key freshly checked, so the
daemon starts idle:

    keyrotd-bench --n 10000 --fresh-checks --dir /tmp/d10k --skip-sweep --rotations 0 \
        --scrapes 1 --idle-secs 1
    bench/ready.py target/release/keyrotd /tmp/d10k 9 1

usage: ready.py BINARY DIR RUNS IDLE_SECS [ENV=VALUE ...]"""
import os, socket, subprocess, sys, time, signal, statistics
binary, d, runs, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
extra = dict(kv.split('=', 1) for kv in sys.argv[5:])
def rollup(pid):
    out = {}
    for line in open(f'/proc/{pid}/smaps_rollup'):
        parts = line.split()
        if len(parts) >= 3 and parts[2] == 'kB':
            out[parts[0].rstrip(':')] = int(parts[1])
    return out
def status(pid, key):
    for line in open(f'/proc/{pid}/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1])
readies, rss_ready, rss_idle, anon_idle, file_idle, threads = [], [], [], [], [], []
for i in range(runs):
    sp = os.path.join(d, 'ready.sock')
    try: os.unlink(sp)
    except FileNotFoundError: pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sp); s.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=sp, RUST_LOG='warn'); env.update(extra)
    log = open(os.path.join(d, 'ready.log'), 'w')
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, '--config', os.path.join(d, 'daemon.toml'), '--master-key', os.path.join(d, 'master.key'), 'run'], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    while True:
        msg = s.recv(4096).decode()
        if 'READY=1' in msg: break
    t = (time.perf_counter() - t0) * 1e3
    readies.append(t); rss_ready.append(status(p.pid, 'VmRSS'))
    if idle > 0:
        time.sleep(idle)
        r = rollup(p.pid)
        rss_idle.append(r['Rss']); anon_idle.append(r['Anonymous']); file_idle.append(r['Rss'] - r['Anonymous'])
        threads.append(status(p.pid, 'Threads'))
    p.send_signal(signal.SIGTERM); p.wait(); s.close()
def f(xs): return f"median {statistics.median(xs):.1f} min {min(xs):.1f} max {max(xs):.1f}" if xs else '-'
print(f"ready_ms: {f(readies)}  all={[round(x) for x in readies]}")
print(f"rss_at_ready_MiB: {f([x/1024 for x in rss_ready])}")
if rss_idle:
    print(f"idle rss MiB: {f([x/1024 for x in rss_idle])}; anon {f([x/1024 for x in anon_idle])}; file {f([x/1024 for x in file_idle])}; threads {threads}")
