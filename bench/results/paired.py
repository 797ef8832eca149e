import sys,re,statistics
runs=[];cur={}
for line in open(sys.argv[1]):
    m=re.match(r'Benchmark(\S+?)-2\s+\d+\s+([\d.]+) ns/op',line)
    if not m: continue
    name,v=m.group(1),float(m.group(2))
    if name in cur: runs.append(cur);cur={}
    cur[name]=v
if cur: runs.append(cur)
base=sys.argv[2]
names=[n for n in runs[0] if n!=base]
print("runs",len(runs))
print("%-40s %10s %10s %10s"%("variant","median ns","med diff","med ratio"))
print("%-40s %10.1f"%(base,statistics.median(r[base] for r in runs)))
for n in names:
    vals=[r[n] for r in runs if n in r]
    d=[r[n]-r[base] for r in runs if n in r]
    q=[r[n]/r[base] for r in runs if n in r]
    print("%-40s %10.1f %10.1f %10.2f"%(n,statistics.median(vals),statistics.median(d),statistics.median(q)))
