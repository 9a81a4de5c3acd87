# Sourced by detect.sh and tls.sh: the agent's one verdict about LOCAL (from VERDICTS) must be
# WANT, with its byte count equal to what the client received (from CLIENT); EXTRA: a pattern
# the verdict line must also match (or empty).
#   judged VERDICTS CLIENT LOCAL WANT [EXTRA]
judged() {
    got=$(grep "\"local\":\"$3\"" $1)
    echo "client: $(cat $2)"
    echo "agent: $got"
    verdict=$(echo "$got" | sed -n 's/.*"verdict":"\([a-z_]*\)".*/\1/p')
    sent=$(echo "$got" | sed -n 's/.*"sent_bytes":\([0-9]*\).*/\1/p')
    received=$(sed -n 's/.*"received_bytes":\([0-9]*\).*/\1/p' $2)
    [ "$(echo "$got" | grep -c .)" = 1 ] || { echo "FAIL: expected one verdict"; exit 1; }
    [ -z "$5" ] || echo "$got" | grep -q "$5" || { echo "FAIL: the verdict lacks $5"; exit 1; }
    [ "$verdict" = "$4" ] || { echo "FAIL: verdict $verdict, expected $4"; exit 1; }
    [ "$sent" = "$received" ] || { echo "FAIL: agent counted $sent bytes, the client received $received"; exit 1; }
    echo "ok: $verdict, $sent bytes on both sides"
}

# The client side of the same response: the agent's one client-side verdict about a read from
# LOCAL must be WANT, with received_bytes equal to what the client received.
#   judged_client VERDICTS CLIENT LOCAL WANT
judged_client() {
    got=$(grep '"side":"client"' $1 | grep "\"peer\":\"$3\"")
    echo "agent (client side): $got"
    verdict=$(echo "$got" | sed -n 's/.*"verdict":"\([a-z_]*\)".*/\1/p')
    ours=$(echo "$got" | sed -n 's/.*"received_bytes":\([0-9]*\).*/\1/p')
    theirs=$(sed -n 's/.*"received_bytes":\([0-9]*\).*/\1/p' $2)
    [ "$(echo "$got" | grep -c .)" = 1 ] || { echo "FAIL: expected one client-side verdict"; exit 1; }
    [ "$verdict" = "$4" ] || { echo "FAIL: client-side verdict $verdict, expected $4"; exit 1; }
    [ "$ours" = "$theirs" ] || { echo "FAIL: agent counted $ours bytes read, the client $theirs"; exit 1; }
    echo "ok: client side $verdict, $ours bytes on both sides"
}
