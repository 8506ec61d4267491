package cli

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/printsafe"
	"github.com/hermes-cloud/migrator/store"
)

// run follow's live view writes its own cursor movements under the
// command line's printsafe writer, so it cleans its frame's text itself:
// a reason or app name carrying escapes, CR or a newline moves nothing
// and adds no line (the redraw counts them).
func TestRunFollowLiveViewCleansText(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)
	s := sampleSnapshot(now)
	hostile := "\x1b]52;c;ZXZpbA==\x07<!channel>\x1b[2J\r\u009b31m\nnext line\x1bPq\x1b\\"
	s.Run.State, s.Run.StateReason = store.RunPaused, hostile
	s.InFlight[0].App = "hermes-" + hostile
	var b bytes.Buffer
	v := &liveView{w: &b, size: func() (int, int) { return 120, 40 }}
	for range 2 {
		if err := v.show(context.Background(), s, now); err != nil {
			t.Fatal(err)
		}
	}
	frames := strings.Split(b.String(), "\r\x1b[J")
	if got := strings.Count(frames[len(frames)-1], "\n"); got != v.lines {
		t.Fatalf("the last frame has %d lines, the redraw counts %d", got, v.lines)
	}
	v.stop()
	out := b.String()
	for _, own := range []string{"\x1b[?25l", "\x1b[?25h", "\r\x1b[J"} {
		out = strings.ReplaceAll(out, own, "")
	}
	out = regexp.MustCompile(`\x1b\[\d+A`).ReplaceAllString(out, "")
	if c := terminalControls(out); c != "" {
		t.Fatalf("the live view wrote a control from the data: %s", c)
	}
	if !strings.Contains(out, "<!channel>") {
		t.Fatalf("the text itself is gone:\n%s", out)
	}
	if underneath(printsafe.NewWriter(os.Stdout)) != os.Stdout || underneath(os.Stdout) != os.Stdout {
		t.Fatal("the live view does not find the terminal under the printsafe writer")
	}
}
