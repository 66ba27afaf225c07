# walpages.py DIR: counts the copied WAL's current frames by the table or index their page belongs to
import struct,sys,sqlite3,collections,shutil
d=sys.argv[1]
import os
if not os.path.exists(d+'/w.bin'): shutil.copy(d+'/x.db-wal',d+'/w.bin')  # opening x.db below checkpoints and removes its WAL
data=open(d+'/w.bin','rb').read()
magic,ver,psz,ckseq,salt1,salt2,c1,c2=struct.unpack('>IIIIIIII',data[:32])
frames=[]; off=32; commits=0; cur=[]
while off+24+psz<=len(data):
    pg,commit,s1,s2=struct.unpack('>IIII',data[off:off+16])
    if (s1,s2)!=(salt1,salt2): break
    cur.append(pg)
    if commit: frames+=cur; cur=[]; commits+=1
    off+=24+psz
con=sqlite3.connect(d+'/x.db')
owner={pg:name for name,pg in con.execute('SELECT name, pageno FROM dbstat')}
c=collections.Counter(owner.get(p,'(unknown)') for p in frames)
print('frames',len(frames),'commits',commits,'frames/commit %.1f'%(len(frames)/max(commits,1)))
for k,v in c.most_common(): print('  %-34s %6d  %5.1f%%  %.2f/commit'%(k,v,100*v/len(frames),v/max(commits,1)))
