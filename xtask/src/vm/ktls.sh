#!/bin/busybox sh
# Kernel TLS in the guest: the agent watches one `truncwatch lab ktls` exchange (the kernel's
# tls module makes the records; the applications hand the socket plaintext) and must judge it
# as expected, on the server side and on the client side, from that plaintext.
#   ktls.sh NAME EXPECTED-VERDICT LAB-KTLS-ARGS...
# EXPECTED-VERDICT `unseen`: no verdict about the exchange at all (what the fentry and kprobe
# backends give: they hook tcp_sendmsg, which kTLS sends bypass, tls_sw_sendmsg calling
# tcp_sendmsg_locked). Otherwise the agent's byte counts must equal the client's, and the
# verdict says "tls":false (no TLS library was involved: the kernel's own TLS is plain socket
# I/O to the agent).
name=$1 want=$2; shift 2
out=/tmp/$name
rm -f $out.*
/bin/truncwatch run --all --format json --metrics-addr off --canary-interval 0s >$out.verdicts 2>$out.agent &
agent=$!
for i in $(seq 300); do grep -q "truncwatch: ready" $out.agent && break; sleep 0.1; done
/bin/truncwatch lab ktls "$@" >$out.client || { echo "FAIL: lab ktls"; kill -INT $agent; exit 1; }
sleep 1
kill -INT $agent; wait $agent
server=$(sed -n 's/.*"server":"\([0-9.:]*\)".*/\1/p' $out.client)
if [ "$want" = unseen ]; then
    echo "client: $(cat $out.client)"
    got=$(grep -e "\"local\":\"$server\"" -e "\"peer\":\"$server\"" $out.verdicts)
    echo "agent: $got"
    [ -z "$got" ] || { echo "FAIL: expected no verdict about the exchange"; exit 1; }
    echo "ok: unseen, as documented"
    exit 0
fi
. /bin/judged.sh
judged $out.verdicts $out.client "$server" "$want" '"tls":false'
case $want in short_write) client_want=truncated ;; *) client_want=$want ;; esac
judged_client $out.verdicts $out.client "$server" "$client_want"
