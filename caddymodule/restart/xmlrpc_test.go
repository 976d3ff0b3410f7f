package restart

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEncodeCall(t *testing.T) {
	b, err := encodeCall("supervisor.startProcess", "grp:<b&1>", false, 7)
	require.NoError(t, err)
	assert.Equal(t, `<?xml version="1.0"?>
<methodCall><methodName>supervisor.startProcess</methodName><params>`+
		`<param><value><string>grp:&lt;b&amp;1&gt;</string></value></param>`+
		`<param><value><boolean>0</boolean></value></param>`+
		`<param><value><int>7</int></value></param>`+
		`</params></methodCall>
`, string(b))
	_, err = encodeCall("x", 1.5)
	assert.Error(t, err)
}

func TestDecodeResponse(t *testing.T) {
	// as supervisord 4.2 answers getProcessInfo (abridged)
	v, err := decodeResponse(strings.NewReader(`<?xml version='1.0'?>
<methodResponse>
<params>
<param>
<value><struct>
<member>
<name>name</name>
<value><string>backend1</string></value>
</member>
<member>
<name>pid</name>
<value><int>4242</int></value>
</member>
<member>
<name>statename</name>
<value><string>RUNNING</string></value>
</member>
<member>
<name>description</name>
<value>pid 4242, uptime 0:00:03</value>
</member>
<member>
<name>ok</name>
<value><boolean>1</boolean></value>
</member>
<member>
<name>list</name>
<value><array><data><value><i4>1</i4></value><value><double>2.5</double></value><value><nil/></value></data></array></value>
</member>
</struct></value>
</param>
</params>
</methodResponse>`))
	require.NoError(t, err)
	assert.Equal(t, map[string]any{
		"name": "backend1", "pid": int64(4242), "statename": "RUNNING",
		"description": "pid 4242, uptime 0:00:03", "ok": true,
		"list": []any{int64(1), 2.5, nil},
	}, v)

	_, err = decodeResponse(strings.NewReader(`<?xml version='1.0'?>
<methodResponse><fault><value><struct>
<member><name>faultCode</name><value><int>10</int></value></member>
<member><name>faultString</name><value><string>BAD_NAME: nope</string></value></member>
</struct></value></fault></methodResponse>`))
	require.Error(t, err)
	assert.Equal(t, faultBadName, faultCode(err))
	assert.Equal(t, "fault 10: BAD_NAME: nope", err.Error())

	for _, bad := range []string{
		``, `<html>502 Bad Gateway</html>`,
		`<methodResponse><params></params></methodResponse>`,
		`<methodResponse><params><param><value><int>x</int></value></param></params></methodResponse>`,
		`<methodResponse><params><param><value><boolean>yes</boolean></value></param></params></methodResponse>`,
	} {
		_, err := decodeResponse(strings.NewReader(bad))
		assert.Error(t, err, bad)
		assert.Zero(t, faultCode(err), bad)
	}
}
