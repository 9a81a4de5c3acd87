#!/bin/busybox sh
# Kernel TLS in the guest: the agent watches one `truncwatch lab ktls` exchange (the kernel's
# tls module makes the records; the applications hand the socket plaintext and read plaintext)
# and must judge it as expected, on the server side and on the client side.
#   ktls.sh NAME SERVER-VERDICT CLIENT-VERDICT LAB-KTLS-ARGS...
# `unseen`: no verdict on that side at all: the fentry and kprobe backends' server side (they
# hook tcp_sendmsg, which kTLS sends bypass, tls_sw_sendmsg calling tcp_sendmsg_locked), and
# every backend's client side (a kTLS client is not tracked: the kernel's counts of bytes read
# are of records, not plaintext).
# Otherwise the agent's byte count must equal the client's; server-side verdicts say
# "tls":false (no TLS library was involved: the kernel's TLS is plain socket I/O to the agent).
name=$1 want=$2 client_want=$3; shift 3
out=/tmp/$name
rm -f $out.*
/bin/truncwatch run --all --format json --metrics-addr off --canary-interval 0s >$out.verdicts 2>$out.agent &
agent=$!
for i in $(seq 300); do grep -q "truncwatch: ready" $out.agent && break; sleep 0.1; done
/bin/truncwatch lab ktls "$@" >$out.client || { echo "FAIL: lab ktls"; kill -INT $agent; exit 1; }
sleep 1
kill -INT $agent; wait $agent
server=$(sed -n 's/.*"server":"\([0-9.:]*\)".*/\1/p' $out.client)
echo "client: $(cat $out.client)"
unseen() {
    got=$(grep "$1" $out.verdicts)
    echo "agent ($2): $got"
    [ -z "$got" ] || { echo "FAIL: expected no $2 verdict"; exit 1; }
    echo "ok: $2 unseen, as documented"
}
. /bin/judged.sh
if [ "$want" = unseen ]; then
    unseen "\"side\":\"server\".*\"local\":\"$server\"" "server-side"
else
    judged $out.verdicts $out.client "$server" "$want" '"tls":false'
fi
if [ "$client_want" = unseen ]; then
    unseen "\"side\":\"client\".*\"peer\":\"$server\"" "client-side"
else
    judged_client $out.verdicts $out.client "$server" "$client_want"
fi
