// Literal RESP replies for the rewrite tests, written out once by a throwaway script.

package resp

// Literal replies of Redis 6/7 and Valkey, and the same replies rewritten for
// testNodes (see conn_test.go).
var (
	slotsResp2 = "*3\r\n*4\r\n:0\r\n:5460\r\n*4\r\n$10\r\n10.0.1.230\r\n:6379\r\n$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n" +
		"*0\r\n*4\r\n$10\r\n10.0.1.233\r\n:6379\r\n$40\r\n07c37dfeb235213a872192d90877d0cd55635b91\r\n" +
		"*2\r\n$8\r\nhostname\r\n$16\r\nredis-4.internal\r\n*3\r\n:5461\r\n:10922\r\n*3\r\n" +
		"$10\r\n10.0.1.231\r\n:6379\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n" +
		"*3\r\n:10923\r\n:16383\r\n*4\r\n$8\r\n10.9.9.9\r\n:6379\r\n$40\r\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f\r\n" +
		"*0\r\n"
	slotsResp2Want = "*3\r\n*4\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:6379\r\n$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n" +
		"*0\r\n*4\r\n$9\r\n127.0.0.1\r\n:6382\r\n$40\r\n07c37dfeb235213a872192d90877d0cd55635b91\r\n" +
		"*2\r\n$8\r\nhostname\r\n$9\r\n127.0.0.1\r\n*3\r\n:5461\r\n:10922\r\n*3\r\n$9\r\n127.0.0.1\r\n" +
		":6380\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n*3\r\n:10923\r\n" +
		":16383\r\n*4\r\n$8\r\n10.9.9.9\r\n:6379\r\n$40\r\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f\r\n" +
		"*0\r\n"
	slotsResp3Hostname = "*1\r\n*4\r\n:0\r\n:16383\r\n*4\r\n$16\r\nredis-4.internal\r\n:6379\r\n$40\r\n07c37dfeb235213a872192d90877d0cd55635b91\r\n" +
		"%1\r\n$2\r\nip\r\n$10\r\n10.0.1.233\r\n*4\r\n$1\r\n?\r\n:6379\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n" +
		"%1\r\n$2\r\nip\r\n$10\r\n10.0.1.231\r\n"
	slotsResp3HostnameWant = "*1\r\n*4\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:6383\r\n$40\r\n07c37dfeb235213a872192d90877d0cd55635b91\r\n" +
		"%1\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n*4\r\n$9\r\n127.0.0.1\r\n:6380\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n" +
		"%1\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n"
	slotsNullEndpoint = "*1\r\n*4\r\n:0\r\n:16383\r\n*4\r\n_\r\n:6379\r\n$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n" +
		"%2\r\n$2\r\nip\r\n$10\r\n10.0.1.230\r\n$8\r\nhostname\r\n$16\r\nredis-0.internal\r\n" +
		"*4\r\n$-1\r\n:6379\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n" +
		"*2\r\n$2\r\nip\r\n$10\r\n10.0.1.231\r\n"
	slotsNullEndpointWant = "*1\r\n*4\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:6379\r\n$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n" +
		"%2\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nhostname\r\n$9\r\n127.0.0.1\r\n*4\r\n$9\r\n" +
		"127.0.0.1\r\n:6380\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n" +
		"*2\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n"
	slotsEmptyIP = "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$0\r\n\r\n:6379\r\n$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n" +
		"*0\r\n"
	slotsEmptyIPWant = "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:6379\r\n$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n" +
		"*0\r\n"
	shardsResp2 = "*3\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:5460\r\n$5\r\nnodes\r\n*2\r\n*14\r\n$2\r\nid\r\n" +
		"$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n$4\r\nport\r\n:6379\r\n" +
		"$2\r\nip\r\n$10\r\n10.0.1.230\r\n$8\r\nendpoint\r\n$10\r\n10.0.1.230\r\n$4\r\nrole\r\n" +
		"$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n$6\r\n" +
		"online\r\n*16\r\n$2\r\nid\r\n$40\r\n07c37dfeb235213a872192d90877d0cd55635b91\r\n" +
		"$4\r\nport\r\n:6379\r\n$2\r\nip\r\n$10\r\n10.0.1.233\r\n$8\r\nendpoint\r\n$16\r\n" +
		"redis-4.internal\r\n$8\r\nhostname\r\n$16\r\nredis-4.internal\r\n$4\r\nrole\r\n" +
		"$7\r\nreplica\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n$6\r\n" +
		"online\r\n*4\r\n$5\r\nslots\r\n*2\r\n:5461\r\n:10922\r\n$5\r\nnodes\r\n*1\r\n*16\r\n" +
		"$2\r\nid\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n$4\r\nport\r\n" +
		":6379\r\n$8\r\ntls-port\r\n:6390\r\n$2\r\nip\r\n$10\r\n10.0.1.231\r\n$8\r\nendpoint\r\n" +
		"$10\r\n10.0.1.231\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n" +
		":72156\r\n$6\r\nhealth\r\n$6\r\nonline\r\n*4\r\n$5\r\nslots\r\n*2\r\n:10923\r\n:16383\r\n" +
		"$5\r\nnodes\r\n*1\r\n*14\r\n$2\r\nid\r\n$40\r\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f\r\n" +
		"$4\r\nport\r\n:6379\r\n$2\r\nip\r\n$8\r\n10.9.9.9\r\n$8\r\nendpoint\r\n$8\r\n10.9.9.9\r\n" +
		"$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n" +
		"$6\r\nonline\r\n"
	shardsResp2Want = "*3\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:5460\r\n$5\r\nnodes\r\n*2\r\n*14\r\n$2\r\nid\r\n" +
		"$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n$4\r\nport\r\n:6379\r\n" +
		"$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n" +
		"$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n$6\r\n" +
		"online\r\n*16\r\n$2\r\nid\r\n$40\r\n07c37dfeb235213a872192d90877d0cd55635b91\r\n" +
		"$4\r\nport\r\n:6382\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n" +
		"$8\r\nhostname\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$7\r\nreplica\r\n$18\r\nreplication-offset\r\n" +
		":72156\r\n$6\r\nhealth\r\n$6\r\nonline\r\n*4\r\n$5\r\nslots\r\n*2\r\n:5461\r\n:10922\r\n" +
		"$5\r\nnodes\r\n*1\r\n*16\r\n$2\r\nid\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n" +
		"$4\r\nport\r\n:6380\r\n$8\r\ntls-port\r\n:6390\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n" +
		"$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n" +
		":72156\r\n$6\r\nhealth\r\n$6\r\nonline\r\n*4\r\n$5\r\nslots\r\n*2\r\n:10923\r\n:16383\r\n" +
		"$5\r\nnodes\r\n*1\r\n*14\r\n$2\r\nid\r\n$40\r\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f\r\n" +
		"$4\r\nport\r\n:6379\r\n$2\r\nip\r\n$8\r\n10.9.9.9\r\n$8\r\nendpoint\r\n$8\r\n10.9.9.9\r\n" +
		"$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n" +
		"$6\r\nonline\r\n"
	shardsResp3 = "*3\r\n%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:5460\r\n$5\r\nnodes\r\n*2\r\n%7\r\n$2\r\nid\r\n" +
		"$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n$4\r\nport\r\n:6379\r\n" +
		"$2\r\nip\r\n$10\r\n10.0.1.230\r\n$8\r\nendpoint\r\n$10\r\n10.0.1.230\r\n$4\r\nrole\r\n" +
		"$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n$6\r\n" +
		"online\r\n%8\r\n$2\r\nid\r\n$40\r\n07c37dfeb235213a872192d90877d0cd55635b91\r\n" +
		"$4\r\nport\r\n:6379\r\n$2\r\nip\r\n$10\r\n10.0.1.233\r\n$8\r\nendpoint\r\n$16\r\n" +
		"redis-4.internal\r\n$8\r\nhostname\r\n$16\r\nredis-4.internal\r\n$4\r\nrole\r\n" +
		"$7\r\nreplica\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n$6\r\n" +
		"online\r\n%2\r\n$5\r\nslots\r\n*2\r\n:5461\r\n:10922\r\n$5\r\nnodes\r\n*1\r\n%8\r\n" +
		"$2\r\nid\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n$4\r\nport\r\n" +
		":6379\r\n$8\r\ntls-port\r\n:6390\r\n$2\r\nip\r\n$10\r\n10.0.1.231\r\n$8\r\nendpoint\r\n" +
		"$10\r\n10.0.1.231\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n" +
		":72156\r\n$6\r\nhealth\r\n$6\r\nonline\r\n%2\r\n$5\r\nslots\r\n*2\r\n:10923\r\n:16383\r\n" +
		"$5\r\nnodes\r\n*1\r\n%7\r\n$2\r\nid\r\n$40\r\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f\r\n" +
		"$4\r\nport\r\n:6379\r\n$2\r\nip\r\n$8\r\n10.9.9.9\r\n$8\r\nendpoint\r\n$8\r\n10.9.9.9\r\n" +
		"$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n" +
		"$6\r\nonline\r\n"
	shardsResp3Want = "*3\r\n%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:5460\r\n$5\r\nnodes\r\n*2\r\n%7\r\n$2\r\nid\r\n" +
		"$40\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca\r\n$4\r\nport\r\n:6379\r\n" +
		"$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n" +
		"$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n$6\r\n" +
		"online\r\n%8\r\n$2\r\nid\r\n$40\r\n07c37dfeb235213a872192d90877d0cd55635b91\r\n" +
		"$4\r\nport\r\n:6382\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n" +
		"$8\r\nhostname\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$7\r\nreplica\r\n$18\r\nreplication-offset\r\n" +
		":72156\r\n$6\r\nhealth\r\n$6\r\nonline\r\n%2\r\n$5\r\nslots\r\n*2\r\n:5461\r\n:10922\r\n" +
		"$5\r\nnodes\r\n*1\r\n%8\r\n$2\r\nid\r\n$40\r\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1\r\n" +
		"$4\r\nport\r\n:6380\r\n$8\r\ntls-port\r\n:6390\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n" +
		"$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n" +
		":72156\r\n$6\r\nhealth\r\n$6\r\nonline\r\n%2\r\n$5\r\nslots\r\n*2\r\n:10923\r\n:16383\r\n" +
		"$5\r\nnodes\r\n*1\r\n%7\r\n$2\r\nid\r\n$40\r\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f\r\n" +
		"$4\r\nport\r\n:6379\r\n$2\r\nip\r\n$8\r\n10.9.9.9\r\n$8\r\nendpoint\r\n$8\r\n10.9.9.9\r\n" +
		"$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:72156\r\n$6\r\nhealth\r\n" +
		"$6\r\nonline\r\n"
	nodesResp2     = "$904\r\n07c37dfeb235213a872192d90877d0cd55635b91 10.0.1.233:6379@16379,redis-4.internal slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 10.0.1.231:6379@16379 master - 0 1426238316232 2 connected 5461-10922\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca :6379@16379 myself,master - 0 0 1 connected 0-5460 [93->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]\n6ec23923021cf3ffec47632106199cb7f496ce01 :0@0 handshake,noaddr - 1426238316232 0 0 disconnected\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 10.9.9.9:6379@16379 master,fail - 1426238316232 1426238316232 3 disconnected 10923-16383\n5ec23923021cf3ffec47632106199cb7f496ce01 10.0.1.232:6379@16379,,tls-port=0,shard-id=5ec2 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 0 1 connected\n4ec23923021cf3ffec47632106199cb7f496ce01 10.0.1.231:6379 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 0 1 connected\n\r\n"
	nodesResp2Want = "$902\r\n07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:6382@16379,127.0.0.1 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:6380@16379 master - 0 1426238316232 2 connected 5461-10922\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-5460 [93->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]\n6ec23923021cf3ffec47632106199cb7f496ce01 :0@0 handshake,noaddr - 1426238316232 0 0 disconnected\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 10.9.9.9:6379@16379 master,fail - 1426238316232 1426238316232 3 disconnected 10923-16383\n5ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:6381@16379,,tls-port=0,shard-id=5ec2 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 0 1 connected\n4ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:6380 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 0 1 connected\n\r\n"
	nodesResp3     = "=908\r\ntxt:07c37dfeb235213a872192d90877d0cd55635b91 10.0.1.233:6379@16379,redis-4.internal slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 10.0.1.231:6379@16379 master - 0 1426238316232 2 connected 5461-10922\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca :6379@16379 myself,master - 0 0 1 connected 0-5460 [93->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]\n6ec23923021cf3ffec47632106199cb7f496ce01 :0@0 handshake,noaddr - 1426238316232 0 0 disconnected\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 10.9.9.9:6379@16379 master,fail - 1426238316232 1426238316232 3 disconnected 10923-16383\n5ec23923021cf3ffec47632106199cb7f496ce01 10.0.1.232:6379@16379,,tls-port=0,shard-id=5ec2 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 0 1 connected\n4ec23923021cf3ffec47632106199cb7f496ce01 10.0.1.231:6379 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 0 1 connected\n\r\n"
	nodesResp3Want = "=906\r\ntxt:07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:6382@16379,127.0.0.1 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:6380@16379 master - 0 1426238316232 2 connected 5461-10922\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-5460 [93->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]\n6ec23923021cf3ffec47632106199cb7f496ce01 :0@0 handshake,noaddr - 1426238316232 0 0 disconnected\n292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 10.9.9.9:6379@16379 master,fail - 1426238316232 1426238316232 3 disconnected 10923-16383\n5ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:6381@16379,,tls-port=0,shard-id=5ec2 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 0 1 connected\n4ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:6380 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 0 1 connected\n\r\n"
	replicas       = "*2\r\n$154\r\n07c37dfeb235213a872192d90877d0cd55635b91 10.0.1.233:6379@16379,redis-4.internal slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\r\n" +
		"$125\r\n5ec23923021cf3ffec47632106199cb7f496ce01 10.0.1.232:6379@16379 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 0 1 connected\r\n"
	replicasWant = "*2\r\n$146\r\n07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:6382@16379,127.0.0.1 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\r\n" +
		"$124\r\n5ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:6381@16379 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 0 1 connected\r\n"
)
