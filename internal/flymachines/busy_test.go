package flymachines

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// A 409 that is not a lease is Fly saying "not now" (concurrent update in
// progress): busy, worth another try; a lease held elsewhere is not.
func TestIsBusy(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&APIError{Op: "fly.update", Status: 409, Msg: "unable to update machine: concurrent update in progress"}, true},
		{fmt.Errorf("rollback: %w", &APIError{Status: 409}), true},
		{&LeaseHeldError{Owner: "someone", ExpiresAt: time.Now()}, false},
		{&APIError{Status: 412}, false},
		{&APIError{Status: 503}, false},
		{errors.New("409"), false},
		{nil, false},
	} {
		if got := IsBusy(tc.err); got != tc.want {
			t.Errorf("IsBusy(%v) = %t", tc.err, got)
		}
	}
}
