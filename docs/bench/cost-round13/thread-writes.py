import re,sys,time,urllib.request,subprocess,os
# per 1 s: commits, msgs stored, per-thread wchar (writer, checkpointer) per message, writer write syscalls per commit
def addr():
    for l in open('/tmp/m/server.out'):
        if l.startswith('http listening on '): return l.split()[-1]
binname=sys.argv[2]
out=open(sys.argv[1],'w'); prev=None; last=None
def tio(pid):
    r={}
    for t in os.listdir('/proc/%s/task'%pid):
        try:
            c=open('/proc/%s/task/%s/comm'%(pid,t)).read().strip()
            io=dict(l.split(': ') for l in open('/proc/%s/task/%s/io'%(pid,t)).read().splitlines())
        except Exception: continue
        k='w' if c.startswith('tern-store-writ') else 'c' if c.startswith('tern-store-chec') else 'o'
        r[k+'wchar']=r.get(k+'wchar',0)+float(io['wchar']); r[k+'syscw']=r.get(k+'syscw',0)+float(io['syscw'])
    return r
while True:
    try:
        a=addr()
        if a!=last: prev=None; last=a
        t=urllib.request.urlopen('http://%s/metrics'%a,timeout=1).read().decode()
        pid=subprocess.run(['pgrep','-f','-n',binname],capture_output=True,text=True).stdout.split()[0]
        v=tio(pid)
    except Exception as e:
        time.sleep(0.5); continue
    for l in t.splitlines():
        if l.startswith('#'): continue
        m=re.match(r'(\S+?)(\{[^}]*\})? (\S+)$',l)
        if m: v[m.group(1)+(m.group(2) or '')]=float(m.group(3))
    if prev:
        d=lambda k: v.get(k,0)-prev.get(k,0)
        cc=d('tern_store_commit_seconds_count'); ms=d('tern_messages_stored_total'); bs=d('tern_store_batch_size_sum')
        if cc>0 and ms>0:
            out.write('commits %6d msgs %6d jobs/msg %4.2f | writer KB/msg %5.1f KB/commit %6.1f writes/commit %5.1f | ckpt KB/msg %5.1f | other KB/msg %5.2f\n'%(cc,ms,bs/ms,d('wwchar')/ms/1024,d('wwchar')/cc/1024,d('wsyscw')/cc,d('cwchar')/ms/1024,d('owchar')/ms/1024)); out.flush()
    prev=v
    time.sleep(1)
