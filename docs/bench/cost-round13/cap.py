# cap.py OUT SECS: logs every UDP packet on lo (time, src port, dst port, UDP payload length), each once
import socket,struct,sys,time
out=open(sys.argv[1],'w'); end=time.time()+float(sys.argv[2])
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.ntohs(0x0003)); s.bind(('lo',0)); s.settimeout(1)
while time.time()<end:
    try: data,addr=s.recvfrom(65535)
    except socket.timeout: continue
    if addr[2]!=0: continue  # PACKET_HOST only: each loopback packet once
    if len(data)<14+20: continue
    eth=struct.unpack('!H',data[12:14])[0]
    if eth!=0x0800: continue
    ihl=(data[14]&15)*4; proto=data[23]
    if proto!=17: continue
    sp,dp,ln=struct.unpack('!HHH',data[14+ihl:14+ihl+6])
    out.write('%.4f %d %d %d\n'%(time.time(),sp,dp,ln-8))
out.close()
