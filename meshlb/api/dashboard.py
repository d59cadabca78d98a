"""The live dashboard page (`GET /` from a browser): polls the node's JSON endpoints."""

DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>meshlb</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;background:#101418;color:#e6e6e6}
h1{font-size:1.4rem} table{border-collapse:collapse;margin:1rem 0}
td,th{padding:.3rem .8rem;border-bottom:1px solid #333;text-align:left}
.alive{color:#6c6}.suspect{color:#ec6}.dead,.left{color:#e66} code{color:#9cf}
</style></head><body>
<h1>meshlb node <code id="node"></code></h1>
<div id="queue">loading…</div>
<h2>Members</h2><table id="peers"><tr><td>loading…</td></tr></table>
<script>
async function refresh(){
  try{
    const q=await (await fetch('/v1/queue')).json();
    document.getElementById('node').textContent=q.node;
    const counters=Object.entries(q.node_counters||{}).map(([k,v])=>k+'='+v).join(' ');
    document.getElementById('queue').innerHTML=
      '<b>queued</b> '+q.queued+' &nbsp; <b>running</b> '+q.running+
      ' &nbsp; <b>counters</b> '+counters;
    const r=await fetch('/v1/cluster');
    if(r.ok){
      const c=await r.json();
      const moved=Object.entries(c.totals.counters||{}).map(([k,v])=>k+'='+v).join(' ');
      document.getElementById('queue').innerHTML+='<br><b>mesh</b> '+c.totals.live+
        ' live, '+c.totals.queued+' queued, '+c.totals.running+' running &nbsp; '+moved;
      const rows=c.nodes.map(p=>'<tr><td>'+p.id+'</td><td class="'+p.state+'">'+p.state+
        '</td><td>'+(p.http_addr||'')+'</td><td>'+p.load.queued+'/'+p.load.running+
        '</td><td>'+p.counters.forwarded+'/'+p.counters.stolen+'/'+p.counters.taken_over+
        '</td><td>'+(p.models||[]).join(', ')+'</td></tr>');
      document.getElementById('peers').innerHTML='<tr><th>id</th><th>state</th><th>http</th>'+
        '<th>queued/running</th><th>forwarded/stolen/taken over</th><th>models</th></tr>'+
        rows.join('');
    }
  }catch(e){document.getElementById('queue').textContent='node unreachable: '+e}
}
refresh();setInterval(refresh,1000);
</script></body></html>
"""
