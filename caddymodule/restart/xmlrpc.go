package restart

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// A minimal XML-RPC codec (http://xmlrpc.com/spec.md), enough to talk to
// supervisord: calls with string, int and bool parameters; answers with
// strings, ints, booleans, doubles, structs, arrays and nil, and faults.

// xmlrpcFault is a fault answer to an XML-RPC call.
type xmlrpcFault struct {
	Code   int
	String string
}

func (f *xmlrpcFault) Error() string {
	return fmt.Sprintf("fault %d: %s", f.Code, f.String)
}

// encodeCall encodes a methodCall. Parameters are strings, ints, bools,
// []any and map[string]any of those.
func encodeCall(method string, params ...any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0"?>` + "\n<methodCall><methodName>")
	if err := xml.EscapeText(&b, []byte(method)); err != nil {
		return nil, err
	}
	b.WriteString("</methodName><params>")
	for _, p := range params {
		b.WriteString("<param>")
		if err := encodeValue(&b, p); err != nil {
			return nil, err
		}
		b.WriteString("</param>")
	}
	b.WriteString("</params></methodCall>\n")
	return b.Bytes(), nil
}

func encodeValue(b *bytes.Buffer, v any) error {
	b.WriteString("<value>")
	switch v := v.(type) {
	case string:
		b.WriteString("<string>")
		if err := xml.EscapeText(b, []byte(v)); err != nil {
			return err
		}
		b.WriteString("</string>")
	case int:
		fmt.Fprintf(b, "<int>%d</int>", v)
	case bool:
		if v {
			b.WriteString("<boolean>1</boolean>")
		} else {
			b.WriteString("<boolean>0</boolean>")
		}
	case []any:
		b.WriteString("<array><data>")
		for _, e := range v {
			if err := encodeValue(b, e); err != nil {
				return err
			}
		}
		b.WriteString("</data></array>")
	case map[string]any:
		b.WriteString("<struct>")
		for k, e := range v {
			b.WriteString("<member><name>")
			if err := xml.EscapeText(b, []byte(k)); err != nil {
				return err
			}
			b.WriteString("</name>")
			if err := encodeValue(b, e); err != nil {
				return err
			}
			b.WriteString("</member>")
		}
		b.WriteString("</struct>")
	default:
		return fmt.Errorf("xml-rpc: cannot encode %T", v)
	}
	b.WriteString("</value>")
	return nil
}

// xrValue is an XML-RPC <value> as encoding/xml sees it.
type xrValue struct {
	String   *string   `xml:"string"`
	Int      *string   `xml:"int"`
	I4       *string   `xml:"i4"`
	I8       *string   `xml:"i8"`
	Boolean  *string   `xml:"boolean"`
	Double   *string   `xml:"double"`
	DateTime *string   `xml:"dateTime.iso8601"`
	Base64   *string   `xml:"base64"`
	Struct   *xrStruct `xml:"struct"`
	Array    *xrArray  `xml:"array"`
	Nil      *struct{} `xml:"nil"`
	Text     string    `xml:",chardata"`
}

type xrStruct struct {
	Members []struct {
		Name  string  `xml:"name"`
		Value xrValue `xml:"value"`
	} `xml:"member"`
}

type xrArray struct {
	Values []xrValue `xml:"data>value"`
}

type xrResponse struct {
	XMLName xml.Name  `xml:"methodResponse"`
	Params  []xrValue `xml:"params>param>value"`
	Fault   *xrValue  `xml:"fault>value"`
}

// decodeResponse decodes a methodResponse into its one value: string,
// int64, bool, float64, map[string]any, []any or nil. A fault answer is an
// error of type *xmlrpcFault.
func decodeResponse(r io.Reader) (any, error) {
	var resp xrResponse
	if err := xml.NewDecoder(r).Decode(&resp); err != nil {
		return nil, fmt.Errorf("xml-rpc: bad answer: %v", err)
	}
	if resp.Fault != nil {
		v, err := resp.Fault.decode()
		if err != nil {
			return nil, err
		}
		m, _ := v.(map[string]any)
		code, _ := m["faultCode"].(int64)
		str, _ := m["faultString"].(string)
		return nil, &xmlrpcFault{Code: int(code), String: str}
	}
	if len(resp.Params) != 1 {
		return nil, fmt.Errorf("xml-rpc: bad answer: %d values, want 1", len(resp.Params))
	}
	return resp.Params[0].decode()
}

func (v *xrValue) decode() (any, error) {
	parseInt := func(s string) (any, error) {
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("xml-rpc: bad int %q", s)
		}
		return n, nil
	}
	switch {
	case v.String != nil:
		return *v.String, nil
	case v.Int != nil:
		return parseInt(*v.Int)
	case v.I4 != nil:
		return parseInt(*v.I4)
	case v.I8 != nil:
		return parseInt(*v.I8)
	case v.Boolean != nil:
		switch strings.TrimSpace(*v.Boolean) {
		case "1":
			return true, nil
		case "0":
			return false, nil
		}
		return nil, fmt.Errorf("xml-rpc: bad boolean %q", *v.Boolean)
	case v.Double != nil:
		f, err := strconv.ParseFloat(strings.TrimSpace(*v.Double), 64)
		if err != nil {
			return nil, fmt.Errorf("xml-rpc: bad double %q", *v.Double)
		}
		return f, nil
	case v.DateTime != nil:
		return *v.DateTime, nil
	case v.Base64 != nil:
		return *v.Base64, nil
	case v.Struct != nil:
		m := make(map[string]any, len(v.Struct.Members))
		for i := range v.Struct.Members {
			e, err := v.Struct.Members[i].Value.decode()
			if err != nil {
				return nil, err
			}
			m[v.Struct.Members[i].Name] = e
		}
		return m, nil
	case v.Array != nil:
		a := make([]any, len(v.Array.Values))
		for i := range v.Array.Values {
			e, err := v.Array.Values[i].decode()
			if err != nil {
				return nil, err
			}
			a[i] = e
		}
		return a, nil
	case v.Nil != nil:
		return nil, nil
	}
	// a value without a type is a string
	return v.Text, nil
}

// faultCode is the code of err if it is an XML-RPC fault, else 0.
func faultCode(err error) int {
	var f *xmlrpcFault
	if errors.As(err, &f) {
		return f.Code
	}
	return 0
}
