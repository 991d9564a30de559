import sys,re,collections,statistics
d=collections.defaultdict(list)
for line in open(sys.argv[1]):
    m=re.match(r'(\w) (\S+)\s+time:\s+\[\S+ \S+ (\S+) (\S+)',line)
    if m:
        side,id,v,u=m.groups(); v=float(v)
        if u=='ps': v/=1000
        if u=='µs' or u=='us': v*=1000
        d[(id,side)].append(v)
ids=sorted(set(k[0] for k in d))
for i in ids:
    a=d[(i,'A')]; b=d[(i,'B')]
    print(f"{i:28s} A med {statistics.median(a):7.2f} {['%.1f'%x for x in a]}  B med {statistics.median(b):7.2f} {['%.1f'%x for x in b]}")
