package flymachines

import (
	"encoding/json"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
)

// GET machine's events, as fly-go v0.9.3 decodes them (newest first), come
// through toMachine with their exit detail; Crashed tells a crash from a
// stop that was asked for.
func TestEvents(t *testing.T) {
	body := `{"id":"m1","state":"started","events":[
		{"type":"start","status":"started","source":"flyd","timestamp":1750000012000},
		{"type":"exit","status":"stopped","source":"flyd","timestamp":1750000010000,
		 "request":{"exit_event":{"exit_code":1,"guest_exit_code":1,"restarting":true,"exited_at":"2025-06-15T15:06:50Z"},"restart_count":2}},
		{"type":"exit","status":"stopped","source":"flyd","timestamp":1750000005000,
		 "request":{"MonitorEvent":{"exit_event":{"exit_code":137,"oom_killed":true,"guest_signal":9}}}},
		{"type":"exit","status":"stopped","source":"flyd","timestamp":1750000001000,
		 "request":{"exit_event":{"requested_stop":true,"signal":15,"exit_code":0}}},
		{"type":"update","status":"replacing","source":"user","timestamp":1750000000000},
		null]}`
	var fm fly.Machine
	if err := json.Unmarshal([]byte(body), &fm); err != nil {
		t.Fatal(err)
	}
	m := toMachine("app", &fm)
	if len(m.Events) != 5 {
		t.Fatalf("%d events, want 5 (nil dropped): %+v", len(m.Events), m.Events)
	}
	if e := m.Events[0]; e.Type != "start" || e.Exit != nil || !e.At.Equal(time.UnixMilli(1750000012000)) {
		t.Errorf("newest %+v", e)
	}
	crash := m.Events[1].Exit
	if crash == nil || !crash.Crashed() || crash.RestartCount != 2 || !crash.Restarting || crash.ExitCode != 1 {
		t.Errorf("crash %+v", crash)
	}
	if got := crash.String(); got != "exit_code=1 oom_killed=false requested_stop=false restarting=true restart_count=2" {
		t.Errorf("String = %q", got)
	}
	if oom := m.Events[2].Exit; oom == nil || !oom.OOMKilled || !oom.Crashed() || oom.ExitCode != 137 {
		t.Errorf("oom (under MonitorEvent) %+v", oom)
	}
	if stop := m.Events[3].Exit; stop == nil || stop.Crashed() {
		t.Errorf("requested stop read as a crash: %+v", stop)
	}
	for _, tc := range []struct {
		e    Exit
		want bool
	}{
		{Exit{ExitCode: 0}, false},
		{Exit{ExitCode: 0, Restarting: true}, true},
		{Exit{ExitCode: 2}, true},
		{Exit{ExitCode: 2, RequestedStop: true}, false},
		{Exit{OOMKilled: true}, true},
		{Exit{GuestExitCode: 3}, true},
	} {
		if tc.e.Crashed() != tc.want {
			t.Errorf("%+v Crashed = %t", tc.e, !tc.want)
		}
	}
}
