// Renders an Ollama TEMPLATE for conversations the way Ollama's template.Execute does for a template that uses
// .Messages: every system message is joined (blank line) into .System, consecutive messages of one role are merged
// with a blank line (tool messages excepted), and the template runs with missingkey=zero.
// Input (stdin): {"template": "...", "default_system": "...", "conversations": [[{"role", "content"}, ...], ...]}
// Output (stdout): a JSON list of the rendered strings.
package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template      string      `json:"template"`
	DefaultSystem string      `json:"default_system"`
	Conversations [][]Message `json:"conversations"`
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			m := msgs[i]
			collated = append(collated, &m)
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(in.Template))
	var out []string
	for _, conv := range in.Conversations {
		// the Modelfile's SYSTEM is prepended when a request carries no system message (Ollama's chat handler)
		if in.DefaultSystem != "" && (len(conv) == 0 || conv[0].Role != "system") {
			conv = append([]Message{{Role: "system", Content: in.DefaultSystem}}, conv...)
		}
		system, messages := collate(conv)
		var b bytes.Buffer
		if err := tmpl.Execute(&b, map[string]any{"System": system, "Messages": messages, "Response": ""}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
