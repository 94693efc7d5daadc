package resp

import (
	"strings"
	"testing"
)

func TestConn_ClusterReplies(t *testing.T) {
	get := cmd("GET", "foo")
	runCases(t, []rewriteCase{{
		name:     "slots resp2 with metadata and hostname",
		requests: cmd("CLUSTER", "SLOTS"),
		replies:  slotsResp2,
		want:     slotsResp2Want,
		redirs:   []string{"UNKNOWN 10923 10.9.9.9:6379"},
	}, {
		name:     "slots resp3 hostname endpoints",
		requests: cmd("cluster", "slots"),
		replies:  slotsResp3Hostname,
		want:     slotsResp3HostnameWant,
		redirs:   []string{},
	}, {
		name:     "slots null endpoints",
		requests: cmd("Cluster", "Slots"),
		replies:  slotsNullEndpoint,
		want:     slotsNullEndpointWant,
	}, {
		name:     "slots empty ip of a fresh node",
		requests: cmd("CLUSTER", "SLOTS"),
		replies:  slotsEmptyIP,
		want:     slotsEmptyIPWant,
	}, {
		name:     "slots literal",
		requests: "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n",
		replies:  "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$10\r\n10.0.1.231\r\n:6379\r\n$1\r\nx\r\n",
		want:     "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:6380\r\n$1\r\nx\r\n",
	}, {
		name:     "shards resp2",
		requests: cmd("CLUSTER", "SHARDS"),
		replies:  shardsResp2,
		want:     shardsResp2Want,
		redirs:   []string{"UNKNOWN 10923 10.9.9.9:6379"},
	}, {
		name:     "shards resp3",
		requests: cmd("CLUSTER", "SHARDS"),
		replies:  shardsResp3,
		want:     shardsResp3Want,
		redirs:   []string{"UNKNOWN 10923 10.9.9.9:6379"},
	}, {
		name:     "nodes resp2",
		requests: cmd("CLUSTER", "NODES"),
		replies:  nodesResp2,
		want:     nodesResp2Want,
		redirs:   []string{"UNKNOWN -1 10.9.9.9:6379"},
	}, {
		name:     "nodes resp3 verbatim",
		requests: cmd("CLUSTER", "NODES"),
		replies:  nodesResp3,
		want:     nodesResp3Want,
	}, {
		name:     "replicas",
		requests: cmd("CLUSTER", "REPLICAS", "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca"),
		replies:  replicas,
		want:     replicasWant,
	}, {
		name:     "slaves",
		requests: cmd("CLUSTER", "SLAVES", "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca"),
		replies:  replicas,
		want:     replicasWant,
	}, {
		name:     "error reply to a cluster command",
		requests: cmd("CLUSTER", "NODES") + get,
		replies:  "-ERR This instance has cluster support disabled\r\n" + nodesResp2,
		want:     "-ERR This instance has cluster support disabled\r\n" + nodesResp2,
	}, {
		name:     "value that looks like cluster nodes",
		requests: get + cmd("CLUSTER", "INFO") + cmd("CLUSTER", "MYID"),
		replies:  nodesResp2 + nodesResp3 + bulk("10.0.1.231:6379"),
		want:     nodesResp2 + nodesResp3 + bulk("10.0.1.231:6379"),
	}, {
		name: "pipeline of mixed commands",
		requests: get + cmd("CLUSTER", "SLOTS") + cmd("SET", "k", "v") + cmd("CLUSTER", "NODES") +
			cmd("MGET", "a", "b") + cmd("CLUSTER", "SHARDS") + get + cmd("CLUSTER", "NODES"),
		replies: nodesResp2 + slotsResp2 + "+OK\r\n" + nodesResp2 +
			"*2\r\n" + nodesResp2 + "$-1\r\n" + shardsResp3 + "-MOVED 1 10.0.1.230:6379\r\n" + nodesResp3,
		want: nodesResp2 + slotsResp2Want + "+OK\r\n" + nodesResp2Want +
			"*2\r\n" + nodesResp2 + "$-1\r\n" + shardsResp3Want + "-MOVED 1 127.0.0.1:6379\r\n" + nodesResp3Want,
	}, {
		name:     "resp3 pushes and attributes are not replies",
		requests: cmd("HELLO", "3") + get + cmd("CLUSTER", "NODES") + get,
		replies: "%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n" +
			">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nfoo\r\n" + bulk("x") +
			">2\r\n$10\r\ninvalidate\r\n" + "*1\r\n" + nodesResp2 +
			"|1\r\n+ttl\r\n:100\r\n" + nodesResp3 + nodesResp2,
		want: "%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n" +
			">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nfoo\r\n" + bulk("x") +
			">2\r\n$10\r\ninvalidate\r\n" + "*1\r\n" + nodesResp2 +
			"|1\r\n+ttl\r\n:100\r\n" + nodesResp3Want + nodesResp2,
	}, {
		name:     "inline commands",
		requests: "PING\r\n  \r\n\r\ncluster nodes\n\"CLUSTER\" 'slots'\r\nGET \"a b\"\r\n",
		replies:  "+PONG\r\n" + nodesResp2 + slotsResp2 + nodesResp2,
		want:     "+PONG\r\n" + nodesResp2Want + slotsResp2Want + nodesResp2,
	}, {
		name:     "multi exec",
		requests: cmd("MULTI") + cmd("CLUSTER", "NODES") + get + cmd("CLUSTER", "SLOTS") + cmd("EXEC") + get,
		replies:  "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n" + nodesResp2 + nodesResp2 + slotsResp2 + nodesResp2,
		want:     "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n" + nodesResp2Want + nodesResp2 + slotsResp2Want + nodesResp2,
	}, {
		name: "exec with a different number of replies is left alone",
		requests: cmd("MULTI") + cmd("CLUSTER", "NODES") + cmd("WATCH", "x") + get + cmd("EXEC") +
			cmd("MULTI") + get + cmd("CLUSTER", "NODES") + cmd("EXEC"),
		replies: "+OK\r\n+QUEUED\r\n-ERR WATCH inside MULTI is not allowed\r\n+QUEUED\r\n*1\r\n" + nodesResp2 +
			"+OK\r\n+QUEUED\r\n-ERR unknown\r\n-EXECABORT Transaction discarded because of previous errors.\r\n",
		want: "+OK\r\n+QUEUED\r\n-ERR WATCH inside MULTI is not allowed\r\n+QUEUED\r\n*1\r\n" + nodesResp2 +
			"+OK\r\n+QUEUED\r\n-ERR unknown\r\n-EXECABORT Transaction discarded because of previous errors.\r\n",
	}, {
		name:     "multi that failed",
		requests: cmd("MULTI") + cmd("CLUSTER", "NODES") + cmd("EXEC") + cmd("CLUSTER", "NODES"),
		replies:  "-NOPERM no permissions to run the 'multi' command\r\n" + nodesResp2 + "-ERR EXEC without MULTI\r\n" + nodesResp2,
		want:     "-NOPERM no permissions to run the 'multi' command\r\n" + nodesResp2Want + "-ERR EXEC without MULTI\r\n" + nodesResp2Want,
	}, {
		name:     "subscribe stops pairing, redirects still rewritten",
		requests: cmd("CLUSTER", "NODES") + cmd("SUBSCRIBE", "a", "b") + cmd("CLUSTER", "NODES"),
		replies: nodesResp2 + "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n" + "*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n" +
			nodesResp2 + "-MOVED 1 10.0.1.230:6379\r\n",
		want: nodesResp2Want + "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n" + "*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n" +
			nodesResp2 + "-MOVED 1 127.0.0.1:6379\r\n",
		mode: modeUnpaired,
	}, {
		name:     "long error to subscribe stops pairing",
		requests: cmd("SUBSCRIBE", "a") + cmd("CLUSTER", "NODES"),
		replies:  "-ERR " + strings.Repeat("x", 2000) + "\r\n" + nodesResp2,
		want:     "-ERR " + strings.Repeat("x", 2000) + "\r\n" + nodesResp2,
		mode:     modeUnpaired,
	}, {
		name:     "client reply skip stops pairing",
		requests: cmd("CLIENT", "REPLY", "SKIP") + cmd("CLUSTER", "NODES") + cmd("CLUSTER", "NODES"),
		replies:  nodesResp2,
		want:     nodesResp2,
		mode:     modeUnpaired,
	}, {
		name:     "monitor stops pairing",
		requests: cmd("MONITOR") + cmd("CLUSTER", "NODES"),
		replies:  "+OK\r\n+1339518083.107412 [0 127.0.0.1:60866] \"cluster\" \"nodes\"\r\n" + nodesResp2,
		want:     "+OK\r\n+1339518083.107412 [0 127.0.0.1:60866] \"cluster\" \"nodes\"\r\n" + nodesResp2,
		mode:     modeUnpaired,
	}, {
		name:     "psync is copied raw",
		requests: cmd("CLUSTER", "NODES") + cmd("PSYNC", "?", "-1"),
		replies:  nodesResp2 + "+FULLRESYNC 8de1787ba490483314a4d30f1c628bc5025eb761 0\r\n$5\r\nREDIS-MOVED 1 10.0.1.230:6379\r\n",
		want:     nodesResp2Want + "+FULLRESYNC 8de1787ba490483314a4d30f1c628bc5025eb761 0\r\n$5\r\nREDIS-MOVED 1 10.0.1.230:6379\r\n",
		mode:     modeRaw,
	}, {
		name:     "garbage reply falls back to raw",
		requests: get + get + get,
		replies:  "$3\r\nfoo\r\n?garbage\r\n-MOVED 1 10.0.1.230:6379\r\n",
		want:     "$3\r\nfoo\r\n?garbage\r\n-MOVED 1 10.0.1.230:6379\r\n",
		mode:     modeRaw,
	}, {
		name:     "garbage request stops pairing",
		requests: "*2\r\n+CLUSTER\r\n$5\r\nNODES\r\n" + cmd("CLUSTER", "NODES"),
		replies:  "-ERR Protocol error: expected '$', got '+'\r\n" + nodesResp2,
		want:     "-ERR Protocol error: expected '$', got '+'\r\n" + nodesResp2,
		mode:     modeUnpaired,
	}, {
		name:     "truncated reply is passed on",
		requests: cmd("CLUSTER", "NODES"),
		replies:  nodesResp2[:len(nodesResp2)-40],
		want:     nodesResp2[:len(nodesResp2)-40],
	}, {
		name:     "repeated headers around a cluster reply",
		requests: strings.Repeat(get, 5) + cmd("CLUSTER", "NODES") + strings.Repeat(get, 5) + cmd("CLUSTER", "NODES"),
		replies:  strings.Repeat(bulk("abc"), 5) + nodesResp2 + strings.Repeat(bulk("abc"), 5) + nodesResp3,
		want:     strings.Repeat(bulk("abc"), 5) + nodesResp2Want + strings.Repeat(bulk("abc"), 5) + nodesResp3Want,
	}, {
		name:     "repeated header with a broken end",
		requests: strings.Repeat(get, 12),
		replies:  strings.Repeat(bulk("abc"), 10) + "$3\r\nabcXY-MOVED 1 10.0.1.230:6379\r\n",
		want:     strings.Repeat(bulk("abc"), 10) + "$3\r\nabcXY-MOVED 1 10.0.1.230:6379\r\n",
		mode:     modeRaw,
	}, {
		name:     "empty and null replies",
		requests: strings.Repeat(cmd("CLUSTER", "SLOTS"), 4),
		replies:  "*0\r\n*-1\r\n_\r\n*1\r\n*0\r\n",
		want:     "*0\r\n*-1\r\n_\r\n*1\r\n*0\r\n",
	}})
}
