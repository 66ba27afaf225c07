import re,sys,time,urllib.request,subprocess
# per 1 s: commits, messages stored, server wchar (bytes written via write syscalls) per commit and per message
def addr():
    for l in open('/tmp/m/server.out'):
        if l.startswith('http listening on '): return l.split()[-1]
binname=sys.argv[2]
out=open(sys.argv[1],'w'); prev=None; last=None
while True:
    try:
        a=addr()
        if a!=last: prev=None; last=a
        t=urllib.request.urlopen('http://%s/metrics'%a,timeout=1).read().decode()
        pid=subprocess.run(['pgrep','-f','-n',binname],capture_output=True,text=True).stdout.split()[0]
        io=dict(l.split(': ') for l in open('/proc/%s/io'%pid).read().splitlines())
    except Exception as e:
        time.sleep(0.5); continue
    v={}
    for l in t.splitlines():
        if l.startswith('#'): continue
        m=re.match(r'(\S+?)(\{[^}]*\})? (\S+)$',l)
        if m: v[m.group(1)+(m.group(2) or '')]=float(m.group(3))
    v['wchar']=float(io['wchar']); v['syscw']=float(io['syscw'])
    if prev:
        d=lambda k: v.get(k,0)-prev.get(k,0)
        cc=d('tern_store_commit_seconds_count'); ms=d('tern_messages_stored_total'); w=d('wchar'); sc=d('syscw')
        if cc>0 and ms>0:
            out.write('commits %6d msgs %6d  KB/commit %6.1f  KB/msg %5.2f  writes/commit %5.1f\n'%(cc,ms,w/cc/1024,w/ms/1024,sc/cc)); out.flush()
    prev=v
    time.sleep(1)
