# bursts.py CAP: per UDP flow (port pair) on lo, packet count and span; then, for the flow given
# as argv[2] ("a-b") or the one with the fewest packets over a span of at least 90 % of the
# capture, its packets grouped into bursts (packets less than 1 s apart), with direction and size.
import sys,collections
rows=[l.split() for l in open(sys.argv[1])]
rows=[(float(t),int(a),int(b),int(n)) for t,a,b,n in rows]
t0,t1=rows[0][0],rows[-1][0]
flows=collections.defaultdict(list)
for t,a,b,n in rows: flows[tuple(sorted((a,b)))].append((t,a,b,n))
print('capture %.0f s, %d packets, %d flows'%(t1-t0,len(rows),len(flows)))
for k,v in sorted(flows.items(),key=lambda kv:len(kv[1])):
    if len(v)>=10: print('  flow %s: %d packets, %.0f..%.0f s'%(k,len(v),v[0][0]-t0,v[-1][0]-t0))
if len(sys.argv)>2: key=tuple(int(x) for x in sys.argv[2].split('-'))
else:
    cands=[(len(v),k) for k,v in flows.items() if v[-1][0]-v[0][0]>0.9*(t1-t0) and len(v)>=20]
    key=min(cands)[1]
pk=flows[key]
# the client is the side that sent the flow's first packet
client=pk[0][1]
print('flow',key,'client port',client)
burst=[];prev=None;out=[]
for t,a,b,n in pk:
    if prev is not None and t-prev>=1.0: out.append(burst); burst=[]
    burst.append(('up' if a==client else 'down',n,t)); prev=t
out.append(burst)
for b in out:
    print('%8.1f s  %s'%(b[0][2]-t0,'  '.join('%s %d'%(d,n) for d,n,_ in b)))
