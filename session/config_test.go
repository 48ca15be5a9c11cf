package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    Config
		wantErr string
	}{
		{
			name: "defaults",
			env:  map[string]string{},
			want: Config{Service: DefaultService, Gateway: DefaultService, ConnectTimeout: 3050 * time.Millisecond,
				ReadTimeout: 10 * time.Second, ChunkReadTimeout: 60 * time.Second, StageReadTimeout: 900 * time.Second,
				DownloadTimeout: 900 * time.Second, ChunkWriteTimeout: 600 * time.Second},
		},
		{
			name: "None, any case, is no limit",
			env: map[string]string{EnvConnectTimeout: "None", EnvReadTimeout: "none", EnvChunkReadTimeout: " NONE ",
				EnvStageReadTimeout: "None", EnvDownloadTimeout: "None", EnvChunkWriteTimeout: "None"},
			want: Config{Service: DefaultService, Gateway: DefaultService, ConnectTimeout: NoTimeout,
				ReadTimeout: NoTimeout, ChunkReadTimeout: NoTimeout, StageReadTimeout: NoTimeout,
				DownloadTimeout: NoTimeout, ChunkWriteTimeout: NoTimeout},
		},
		{
			name: "all set, float seconds, trailing slashes trimmed",
			env: map[string]string{EnvToken: " abc \n", EnvService: "http://svc:1/", EnvGateway: "http://gw:2/x/",
				EnvConnectTimeout: "1.5", EnvReadTimeout: "2", EnvChunkReadTimeout: "0.25",
				EnvStageReadTimeout: "30", EnvDownloadTimeout: "40.5", EnvChunkWriteTimeout: "50"},
			want: Config{Token: "abc", Service: "http://svc:1", Gateway: "http://gw:2/x", ConnectTimeout: 1500 * time.Millisecond,
				ReadTimeout: 2 * time.Second, ChunkReadTimeout: 250 * time.Millisecond, StageReadTimeout: 30 * time.Second,
				DownloadTimeout: 40500 * time.Millisecond, ChunkWriteTimeout: 50 * time.Second},
		},
		{name: "not a number", env: map[string]string{EnvReadTimeout: "ten"}, wantErr: EnvReadTimeout},
		{name: "zero", env: map[string]string{EnvChunkReadTimeout: "0"}, wantErr: EnvChunkReadTimeout},
		{name: "negative", env: map[string]string{EnvConnectTimeout: "-1"}, wantErr: EnvConnectTimeout},
		{name: "bad stage", env: map[string]string{EnvStageReadTimeout: "Nonesuch"}, wantErr: EnvStageReadTimeout},
		{name: "bad download", env: map[string]string{EnvDownloadTimeout: "0"}, wantErr: EnvDownloadTimeout},
		{name: "bad write", env: map[string]string{EnvChunkWriteTimeout: "x"}, wantErr: EnvChunkWriteTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ConfigFromEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want.Token, cfg.Token)
			assert.Equal(t, tt.want.Service, cfg.Service)
			assert.Equal(t, tt.want.Gateway, cfg.Gateway)
			assert.Equal(t, tt.want.ConnectTimeout, cfg.ConnectTimeout)
			assert.Equal(t, tt.want.ReadTimeout, cfg.ReadTimeout)
			assert.Equal(t, tt.want.ChunkReadTimeout, cfg.ChunkReadTimeout)
			assert.Equal(t, tt.want.StageReadTimeout, cfg.StageReadTimeout)
			assert.Equal(t, tt.want.DownloadTimeout, cfg.DownloadTimeout)
			assert.Equal(t, tt.want.ChunkWriteTimeout, cfg.ChunkWriteTimeout)
			assert.Equal(t, DefaultMaxRetries, cfg.MaxRetries)
			assert.Equal(t, 5*time.Minute, cfg.RetryMaxElapsed)
			assert.Equal(t, DefaultRetryBase, cfg.RetryBase)
			assert.Equal(t, DefaultCloseBackoff, cfg.CloseBackoff)
			assert.Equal(t, DefaultMaxObjectSize, cfg.MaxObjectSize)
		})
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	tests := []struct {
		name    string
		path    string
		want    string
		wantErr string
	}{
		{name: "trimmed", path: write("ok", "  "+testToken+"\n"), want: testToken},
		{name: "bearer kept", path: write("bearer", "Bearer abc.def\n"), want: "Bearer abc.def"},
		{name: "empty", path: write("empty", " \n\t"), wantErr: "is empty"},
		{name: "missing", path: filepath.Join(dir, "nope"), wantErr: "no such file"},
		{name: "control character", path: write("ctl", testToken+"\x00x"), wantErr: "control character"},
		{name: "directory", path: dir, wantErr: "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadTokenFile(tt.path)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.NotContains(t, err.Error(), testToken)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		is      error
		wantErr string
	}{
		{name: "no token", cfg: Config{}, is: ErrNoToken, wantErr: EnvToken},
		{name: "token with newline", cfg: Config{Token: testToken + "\nX-Evil: 1"}, wantErr: "control character"},
		{name: "bad scheme", cfg: Config{Token: testToken, Service: "ftp://x"}, wantErr: "service URL"},
		{name: "no host", cfg: Config{Token: testToken, Gateway: "http://"}, wantErr: "gateway URL"},
		{name: "query in URL", cfg: Config{Token: testToken, Service: "http://x/?key=abc"}, wantErr: "query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			require.Error(t, err)
			if tt.is != nil {
				assert.ErrorIs(t, err, tt.is)
			}
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.NotContains(t, err.Error(), testToken)
			assert.NotContains(t, err.Error(), "abc")
		})
	}
}

func TestTokenNeverFormatted(t *testing.T) {
	cfg := testConfig("http://user:pw@127.0.0.1:1", nil)
	c, err := New(cfg)
	require.NoError(t, err)

	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%d", "%x"} {
		outputs = append(outputs,
			fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, &cfg), fmt.Sprintf(verb, c),
			fmt.Sprintf(verb, struct{ C Config }{cfg}), fmt.Sprintf(verb, []any{cfg, c}))
	}
	var logs logBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("config", "cfg", cfg, "client", c)
	log.Info("config pointer", "cfg", &cfg)
	outputs = append(outputs, logs.String())

	for _, out := range outputs {
		assert.NotContains(t, out, testToken)
		assert.NotContains(t, out, "pw@")
	}
	js, err := json.Marshal(cfg)
	require.NoError(t, err)
	assert.NotContains(t, string(js), testToken)
	assert.Contains(t, fmt.Sprintf("%+v", cfg), "REDACTED")
	assert.Contains(t, logs.String(), "REDACTED")
	assert.Contains(t, fmt.Sprintf("%v", cfg), "127.0.0.1:1", "the rest of the config stays readable")
}

func TestErrorIsMapping(t *testing.T) {
	tests := []struct {
		status           int
		notExist, denied bool
		gone             bool
	}{
		{status: 404, notExist: true},
		{status: 410, gone: true}, // EIO, not ENOENT: never a silent fill value
		{status: 401, denied: true},
		{status: 403, denied: true},
		{status: 500},
		{status: 503},
		{status: 400},
		{status: 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			var err error = fmt.Errorf("chunk a/0: %w", &Error{Op: "get", Status: tt.status})
			assert.Equal(t, tt.notExist, errors.Is(err, os.ErrNotExist), "ErrNotExist")
			assert.Equal(t, tt.denied, errors.Is(err, os.ErrPermission), "ErrPermission")
			assert.Equal(t, tt.gone, errors.Is(err, ErrGone), "ErrGone")
		})
	}
}

func TestParseDetail(t *testing.T) {
	tests := []struct{ body, want string }{
		{`{"detail":"Session not found"}`, "Session not found"},
		{`{"detail":[{"loc":["query","duration"],"msg":"bad"}]}`, `[{"loc":["query","duration"],"msg":"bad"}]`},
		{`{"detail":null}`, ""},
		{`not json`, ""},
		{`{"detail":"` + strings.Repeat("x", 600) + `"}`, strings.Repeat("x", 512) + "..."},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, parseDetail([]byte(tt.body)), tt.body)
	}
}
