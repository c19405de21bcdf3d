// Command wtgo is a WebTransport client on quic-go/webtransport-go for tokenwire's interop test
// (tests/interop/test_webtransport_go.py): it opens a session, sends one start request on a bidirectional
// stream, and prints what came back as one JSON line: the reply and the frames, decoded as
// docs/protocol.md sections 3 and 3.1 say.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/quic-go/quic-go/quicvarint"
	"github.com/quic-go/webtransport-go"
)

type frame struct {
	Kind    byte   `json:"kind"`
	Seq     uint64 `json:"seq"`
	Payload string `json:"payload"`
}

type result struct {
	// How the server answered a stream this client reset (RESET_STREAM_AT) in the middle of its request.
	ResetAnswer string          `json:"reset_answer"`
	ReplyKind   byte            `json:"reply_kind"`
	Reply       json.RawMessage `json:"reply"`
	Frames      []frame         `json:"frames"`
}

func main() {
	url := flag.String("url", "", "https://127.0.0.1:PORT/v1/webtransport")
	pin := flag.String("sha256", "", "hex SHA-256 of the server certificate (DER)")
	prompt := flag.String("prompt", "hello", "prompt of the start request")
	maxTokens := flag.Int("max-tokens", 8, "max_tokens of the start request")
	maxData := flag.Int64("max-incoming-data", 0, "turn WebTransport flow control on: the session's initial "+
		"SETTINGS_WT_INITIAL_MAX_DATA (webtransport-go raises it with WT_MAX_DATA as it reads, and fails the "+
		"session if the server sends past it); 0: off")
	flag.Parse()
	if err := run(*url, *pin, *prompt, *maxTokens, *maxData); err != nil {
		fmt.Fprintln(os.Stderr, "wtgo:", err)
		os.Exit(1)
	}
}

func run(url, pin, prompt string, maxTokens int, maxData int64) error {
	want, err := hex.DecodeString(pin)
	if err != nil || len(want) != sha256.Size {
		return fmt.Errorf("-sha256 must be 64 hex digits")
	}
	tlsConf := &tls.Config{
		NextProtos:         []string{"h3"},
		InsecureSkipVerify: true, // checked against the pin below, as a browser's serverCertificateHashes
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no server certificate")
			}
			if got := sha256.Sum256(raw[0]); !bytes.Equal(got[:], want) {
				return fmt.Errorf("server certificate sha-256 %x is not pinned", got)
			}
			return nil
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var d webtransport.Transport
	d.TLSClientConfig = tlsConf
	if maxData > 0 {
		d.Config = &webtransport.Config{MaxIncomingData: maxData}
	}
	rsp, sess, err := d.Dial(ctx, url, nil)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	if rsp.StatusCode != 200 {
		return fmt.Errorf("session refused: HTTP %d", rsp.StatusCode)
	}
	defer sess.CloseWithError(0, "done")
	var out result
	if out.ResetAnswer, err = resetMidRequest(ctx, sess); err != nil {
		return err
	}
	str, err := sess.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	body, _ := json.Marshal(map[string]any{"prompt": prompt, "max_tokens": maxTokens, "tokens_per_s": 0})
	msg := append([]byte{0x11}, quicvarint.Append(nil, uint64(len(body)))...)
	if _, err := str.Write(append(msg, body...)); err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	if err := str.Close(); err != nil { // FIN after the request
		return fmt.Errorf("close: %w", err)
	}
	r := bufio.NewReader(str)
	if out.ReplyKind, err = r.ReadByte(); err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	if out.Reply, err = readBytes(r); err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	for {
		kind, err := r.ReadByte()
		if errors.Is(err, io.EOF) {
			break // FIN after the final frame
		} else if err != nil {
			return fmt.Errorf("read frame: %w", err)
		}
		seq, err := quicvarint.Read(r)
		if err != nil {
			return fmt.Errorf("read frame: %w", err)
		}
		payload, err := readBytes(r)
		if err != nil {
			return fmt.Errorf("read frame: %w", err)
		}
		out.Frames = append(out.Frames, frame{kind, seq, string(payload)})
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// resetMidRequest opens a stream, writes part of a start request and resets the stream: webtransport-go
// sends RESET_STREAM_AT, so that the stream header stays reliable. The server resets its side in turn;
// what the read then says is returned.
func resetMidRequest(ctx context.Context, sess *webtransport.Session) (string, error) {
	str, err := sess.OpenStreamSync(ctx)
	if err != nil {
		return "", fmt.Errorf("open stream: %w", err)
	}
	if _, err := str.Write([]byte{0x11, 0x40, 0x64, '{'}); err != nil { // a 100-byte body, 1 byte of it
		return "", fmt.Errorf("write partial request: %w", err)
	}
	str.CancelWrite(0)
	_, err = io.ReadAll(str)
	var streamErr *webtransport.StreamError
	if !errors.As(err, &streamErr) {
		return "", fmt.Errorf("reading a stream reset mid-request: want the server's reset, got %v", err)
	}
	return fmt.Sprintf("stream reset by the server, code %d", streamErr.ErrorCode), nil
}

// readBytes reads a varint length and that many bytes.
func readBytes(r *bufio.Reader) ([]byte, error) {
	n, err := quicvarint.Read(r)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	_, err = io.ReadFull(r, buf)
	return buf, err
}
