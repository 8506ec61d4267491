package cli

import (
	"bufio"
	"errors"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/orchestrator"
)

// maxEnvFile bounds what --env-file reads: the orchestrator's own bounds
// (MaxEnvKeys values of at most MaxEnvValueLen) with room for names.
const maxEnvFile = orchestrator.MaxEnvKeys * (orchestrator.MaxEnvValueLen + 512)

// readEnvFile adds the KEY=VALUE lines of path ("-": standard input) to
// env. The format is Docker's --env-file (docs.docker.com, "docker container
// run": "--env-file"): one KEY=VALUE a line, the value verbatim to the end
// of the line (no quotes removed), blank lines and lines starting with #
// skipped. Unlike Docker, a line without '=' is an error, not a variable
// taken from migrator's own environment. Errors name the line and the key,
// never a value.
func readEnvFile(cmd *cobra.Command, path string, env map[string]string) error {
	name := cmd.CommandPath() + ": --env-file " + path
	var r io.Reader
	if path == "-" {
		r = cmd.InOrStdin()
	} else {
		f, err := os.Open(path)
		if err != nil {
			// The path error names the file, not its contents.
			return usagef("%s: %v", cmd.CommandPath()+": --env-file", err)
		}
		defer f.Close()
		r = f
	}
	sc := bufio.NewScanner(io.LimitReader(r, maxEnvFile+1))
	sc.Buffer(make([]byte, 0, 4<<10), orchestrator.MaxEnvValueLen+1024)
	read, n := 0, 0
	for sc.Scan() {
		n++
		read += len(sc.Bytes()) + 1
		line := strings.TrimSuffix(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimLeft(line, " \t"), "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return usagef("%s: line %d: want KEY=VALUE (a line without '=')", name, n)
		}
		if _, dup := env[k]; dup {
			return usagef("%s: line %d: %q given twice", name, n, k)
		}
		env[k] = v
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return usagef("%s: line %d is longer than %d bytes", name, n+1, orchestrator.MaxEnvValueLen+1024)
		}
		return usagef("%s: %v", name, err)
	}
	if read > maxEnvFile {
		return usagef("%s: more than %d bytes", name, maxEnvFile)
	}
	return nil
}
