# walgrab.py OUTDIR BIN: during the 50 % phase (msgs/s 4,000-6,500 three seconds running), copies db+wal five times, 1 s apart
import re,sys,time,urllib.request,subprocess,os,shutil
out=sys.argv[1]; binname=sys.argv[2]; os.makedirs(out,exist_ok=True)
def addr():
    for l in open('/tmp/m/server.out'):
        if l.startswith('http listening on '): return l.split()[-1]
prev=None; run=0; taken=0
while taken<5:
    try:
        t=urllib.request.urlopen('http://%s/metrics'%addr(),timeout=1).read().decode()
        pid=subprocess.run(['pgrep','-f','-n',binname],capture_output=True,text=True).stdout.split()[0]
    except Exception: time.sleep(0.5); continue
    m=re.search(r'^tern_messages_stored_total (\S+)$',t,re.M); v=float(m.group(1)) if m else 0
    if prev is not None:
        rate=v-prev; run = run+1 if 4000<=rate<=6500 else 0
        if run>=3:
            fds=[os.readlink('/proc/%s/fd/%s'%(pid,f)) for f in os.listdir('/proc/%s/fd'%pid)]
            wal=[f for f in fds if f.endswith('.db-wal')][0]; db=wal[:-4]
            d='%s/%d'%(out,taken); os.makedirs(d,exist_ok=True)
            shutil.copy(db,d+'/x.db'); shutil.copy(wal,d+'/x.db-wal'); taken+=1
    prev=v; time.sleep(1)
print('taken',taken)
