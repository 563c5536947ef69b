#!/bin/sh
# udhcpc hands what it received to its script in the environment; keep it.
[ "$1" = "bound" ] || [ "$1" = "renew" ] || exit 0
env | grep -E '^(ip|subnet|router|dns|serverid|lease|tftp|bootfile|opt[0-9]+)=' > "$UDHCPC_OUT"
