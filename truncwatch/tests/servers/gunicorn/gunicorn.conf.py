# gunicorn settings for the `--timeout` cut (tests/support/servers.rs adds --bind and the
# temp dir). The sync worker handles one request at a time and checks in with the master
# only between requests, so `timeout` is the longest a response may take to send: a worker
# still sending after 1 s (a stalled reader) is killed mid-body.
worker_class = "sync"
workers = 1
timeout = 1
# After SIGABRT the master waits this long before SIGKILL.
graceful_timeout = 1
