#!/bin/busybox sh
# HTTPS in the guest: the agent watches one `truncwatch lab tls` exchange (server and client
# through libssl.so.3) and must judge it as expected, from the plaintext.
#   tls.sh NAME EXPECTED-VERDICT LAB-TLS-ARGS...
# The agent's byte count must equal what the client received, and the line must say tls.
name=$1 want=$2; shift 2
out=/tmp/$name
rm -f $out.*
/bin/truncwatch run --all --format json --metrics-addr off --canary-interval 0s >$out.verdicts 2>$out.agent &
agent=$!
for i in $(seq 300); do grep -q "truncwatch: ready" $out.agent && break; sleep 0.1; done
grep "TLS: hooked" $out.agent || { echo "FAIL: no TLS library hooked:"; cat $out.agent; kill -INT $agent; exit 1; }
/bin/truncwatch lab tls --cert /etc/truncwatch/cert.pem --key /etc/truncwatch/key.pem "$@" >$out.client
sleep 1
kill -INT $agent; wait $agent
server=$(sed -n 's/.*"server":"\([0-9.:]*\)".*/\1/p' $out.client)
. /bin/judged.sh
judged $out.verdicts $out.client "$server" "$want" '"tls":true'
