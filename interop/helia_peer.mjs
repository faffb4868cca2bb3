// A Helia (JavaScript IPFS) node for the medchain bitswap interop test (`make interop`).
// Loopback TCP only, noise + yamux, identify, bitswap; no DHT, no bootstrap, no HTTP gateways.
// Prints {"peer_id", "addrs"} on stdout, then answers one JSON command per stdin line:
//   {"cmd": "add", "path": FILE}                 -> {"cid"}   (Helia's defaults: 1 MiB chunks, raw leaves, CIDv1)
//   {"cmd": "cat", "cid": CID, "peer": MULTIADDR} -> {"sha256", "size"} (dials the peer, fetches over bitswap)
//   {"cmd": "stop"}
import { createHelia } from 'helia'
import { unixfs } from '@helia/unixfs'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { keychain } from '@libp2p/keychain'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import readline from 'node:readline'

const helia = await createHelia({
  libp2p: {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    services: { identify: identify(), keychain: keychain() },
    connectionGater: { denyDialMultiaddr: async () => false } // loopback dials are refused by default
  },
  routers: []
})
await helia.start()
const fs = unixfs(helia)
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
out({ peer_id: helia.libp2p.peerId.toString(), addrs: helia.libp2p.getMultiaddrs().map(String) })

const rl = readline.createInterface({ input: process.stdin })
for await (const line of rl) {
  let cmd
  try {
    cmd = JSON.parse(line)
    if (cmd.cmd === 'add') {
      const cid = await fs.addBytes(await readFile(cmd.path))
      out({ cid: cid.toString() })
    } else if (cmd.cmd === 'cat') {
      await helia.libp2p.dial(multiaddr(cmd.peer))
      const h = createHash('sha256')
      let size = 0
      for await (const chunk of fs.cat(CID.parse(cmd.cid), { signal: AbortSignal.timeout(60000) })) {
        h.update(chunk)
        size += chunk.length
      }
      out({ sha256: h.digest('hex'), size })
    } else if (cmd.cmd === 'stop') {
      break
    } else {
      out({ error: `unknown command ${cmd.cmd}` })
    }
  } catch (err) {
    out({ error: String(err?.stack ?? err) })
  }
}
await helia.stop()
process.exit(0)
