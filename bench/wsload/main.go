// wsload opens N WebSocket clients for the notify-bridge benchmark (bench/bench_notify.py) and
// reports what they received. It exists because N Python clients would need more CPU than the
// bridge they measure on a 2-core machine.
//
//	wsload -url ws://127.0.0.1:8084/ws?token=... -n 100 -sample 10 -seconds 20 -subscribe '{"op":"subscribe"}'
//
// Prints "ready" once every client is connected (and subscribed), then after -seconds one JSON
// line: {"counts": [events per client], "latencies": [seconds, sampled clients], "closes": [codes]}.
// Sampled clients parse every frame (an events frame of the bridge, or one notification of a bare
// broadcast) and take now - event time; the others count events without parsing.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/coder/websocket"
)

type event struct {
	Time string `json:"time"`
}

type frame struct {
	Op     string  `json:"op"`
	Events []event `json:"events"`
	Time   string  `json:"time"`
}

// countIn counts tag in what r yields, through buf, across chunk boundaries.
func countIn(r io.Reader, buf []byte, tag []byte) int {
	n, keep := 0, 0
	for {
		m, err := r.Read(buf[keep:])
		end := keep + m
		n += bytes.Count(buf[:end], tag)
		// carry the last len(tag)-1 bytes: a tag split by the chunk boundary is counted next time
		keep = len(tag) - 1
		if end < keep {
			keep = end
		}
		// a tag entirely inside the carried bytes was counted already: it cannot be, they are shorter
		copy(buf, buf[end-keep:end])
		if err != nil {
			return n
		}
	}
}

func main() {
	url := flag.String("url", "", "WebSocket URL")
	n := flag.Int("n", 100, "clients")
	sample := flag.Int("sample", 10, "clients that parse frames and measure latency")
	seconds := flag.Float64("seconds", 10, "how long to receive after all connected")
	subscribe := flag.String("subscribe", "", "message to send first (and wait for one reply)")
	flag.Parse()

	counts := make([]int, *n)
	var mu sync.Mutex
	var latencies []float64
	var closes []int
	ctx, cancel := context.WithCancel(context.Background())
	var connected, done sync.WaitGroup
	connected.Add(*n)
	done.Add(*n)
	timeTag := []byte(`"time"`)
	closed := func(err error) { // a close frame's code is kept; a dropped connection has none
		if code := websocket.CloseStatus(err); code != -1 {
			mu.Lock()
			closes = append(closes, int(code))
			mu.Unlock()
		}
	}

	for i := 0; i < *n; i++ {
		go func(i int) {
			defer done.Done()
			dial, stop := context.WithTimeout(context.Background(), 60*time.Second)
			c, _, err := websocket.Dial(dial, *url, &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled})
			stop()
			if err != nil {
				fmt.Fprintln(os.Stderr, "dial:", err)
				os.Exit(1)
			}
			c.SetReadLimit(-1)
			if *subscribe != "" {
				if err := c.Write(context.Background(), websocket.MessageText, []byte(*subscribe)); err != nil {
					fmt.Fprintln(os.Stderr, "subscribe:", err)
					os.Exit(1)
				}
				if _, _, err := c.Read(context.Background()); err != nil {
					fmt.Fprintln(os.Stderr, "subscribe reply:", err)
					os.Exit(1)
				}
			}
			connected.Done()
			var mine []float64
			buf := make([]byte, 64*1024)
			for {
				if i >= *sample { // count without keeping the message: no allocation per frame
					_, r, err := c.Reader(ctx)
					if err != nil {
						closed(err)
						break
					}
					counts[i] += countIn(r, buf, timeTag)
					continue
				}
				_, msg, err := c.Read(ctx)
				if err != nil {
					closed(err)
					break
				}
				now := time.Now()
				{
					var f frame
					if json.Unmarshal(msg, &f) != nil {
						continue
					}
					evs := f.Events
					if f.Op == "" {
						evs = []event{{Time: f.Time}}
					}
					for _, e := range evs {
						t, err := time.Parse(time.RFC3339Nano, e.Time)
						if err == nil {
							mine = append(mine, now.Sub(t).Seconds())
						}
						counts[i]++
					}
				}
			}
			c.CloseNow()
			mu.Lock()
			latencies = append(latencies, mine...)
			mu.Unlock()
		}(i)
	}
	connected.Wait()
	fmt.Println("ready")
	time.Sleep(time.Duration(*seconds * float64(time.Second)))
	cancel()
	done.Wait()
	if latencies == nil {
		latencies = []float64{}
	}
	if closes == nil {
		closes = []int{}
	}
	out, _ := json.Marshal(map[string]any{"counts": counts, "latencies": latencies, "closes": closes})
	fmt.Println(string(out))
}
