//! NGINX configuration syntax: a tokenizer (words, quoted strings with
//! escapes, `{`, `}`, `;`, `#` comments) and a parser into a tree of
//! directives, each with the line it starts on. Only the syntax: what the
//! directives mean is the caller's business, and `include` is not followed.

use std::fmt;

/// One directive: `name args… ;` or `name args… { children }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    /// The directive's name, e.g. `proxy_pass`.
    pub name: String,
    /// Its arguments, quotes removed and escapes resolved.
    pub args: Vec<String>,
    /// The line its name is on (1-based).
    pub line: usize,
    /// The directives inside its `{ }`, if it has a block.
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// The directives of its block (none when it has no block).
    pub fn children(&self) -> &[Directive] {
        self.block.as_deref().unwrap_or(&[])
    }

    /// The directive as written, on one line (blocks shown as `{ … }`), for
    /// reports.
    pub fn text(&self) -> String {
        let mut text = self.name.clone();
        for arg in &self.args {
            text.push(' ');
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "{};#\"'".contains(c))
            {
                text.push_str(&format!("{arg:?}"));
            } else {
                text.push_str(arg);
            }
        }
        if self.block.is_some() {
            text.push_str(" { … }");
        }
        text
    }
}

/// Why a configuration could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// The line (1-based).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for SyntaxError {}

/// A token and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A word or a quoted string (quotes removed).
    Word(String),
    Open,
    Close,
    Semicolon,
}

/// Splits `text` into tokens, each with its line.
fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, SyntaxError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '{' | '}' | ';' => {
                chars.next();
                let token = match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    _ => Token::Semicolon,
                };
                tokens.push((token, line));
            }
            '"' | '\'' => {
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(SyntaxError {
                                line: start,
                                reason: format!("a string opened with {c} is not closed"),
                            });
                        }
                        Some(q) if q == c => break,
                        Some('\\') => escape(&mut chars, &mut word, &mut line),
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            word.push(ch);
                        }
                    }
                }
                if let Some(&next) = chars.peek()
                    && !(next.is_whitespace() || matches!(next, '{' | '}' | ';'))
                {
                    return Err(SyntaxError {
                        line,
                        reason: format!("unexpected {next:?} right after a quoted string"),
                    });
                }
                tokens.push((Token::Word(word), start));
            }
            _ => {
                let mut word = String::new();
                // `${name}` is a variable, not a block.
                let mut in_variable = false;
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || ch == ';' {
                        break;
                    }
                    if ch == '{' && !word.ends_with('$') {
                        break;
                    }
                    if ch == '}' && !in_variable {
                        break;
                    }
                    chars.next();
                    match ch {
                        '\\' => escape(&mut chars, &mut word, &mut line),
                        '{' => {
                            in_variable = true;
                            word.push(ch);
                        }
                        '}' => {
                            in_variable = false;
                            word.push(ch);
                        }
                        _ => word.push(ch),
                    }
                }
                tokens.push((Token::Word(word), line));
            }
        }
    }
    Ok(tokens)
}

/// After a backslash: `\"`, `\'`, `\\`, `\n`, `\r` and `\t` as NGINX
/// reads them; any other character is kept with its backslash.
fn escape(chars: &mut std::iter::Peekable<std::str::Chars>, word: &mut String, line: &mut usize) {
    match chars.next() {
        Some('"') => word.push('"'),
        Some('\'') => word.push('\''),
        Some('\\') => word.push('\\'),
        Some('n') => word.push('\n'),
        Some('r') => word.push('\r'),
        Some('t') => word.push('\t'),
        Some(other) => {
            if other == '\n' {
                *line += 1;
            }
            word.push('\\');
            word.push(other);
        }
        None => word.push('\\'),
    }
}

/// Parses a whole configuration file into its top-level directives.
pub fn parse(text: &str) -> Result<Vec<Directive>, SyntaxError> {
    let tokens = tokenize(text)?;
    let mut position = 0;
    let directives = parse_block(&tokens, &mut position, None)?;
    Ok(directives)
}

/// Directives up to the `}` that closes the block opened on `opened` (or
/// the end of the file at the top level).
fn parse_block(
    tokens: &[(Token, usize)],
    position: &mut usize,
    opened: Option<usize>,
) -> Result<Vec<Directive>, SyntaxError> {
    let mut directives = Vec::new();
    loop {
        let Some((token, line)) = tokens.get(*position) else {
            return match opened {
                None => Ok(directives),
                Some(line) => Err(SyntaxError {
                    line,
                    reason: "this block is not closed: '}' is missing".into(),
                }),
            };
        };
        *position += 1;
        let name = match token {
            Token::Word(word) => word.clone(),
            Token::Close if opened.is_some() => return Ok(directives),
            Token::Close => {
                return Err(SyntaxError {
                    line: *line,
                    reason: "unexpected '}': no block is open".into(),
                });
            }
            Token::Open => {
                return Err(SyntaxError {
                    line: *line,
                    reason: "unexpected '{': a block needs a directive name before it".into(),
                });
            }
            Token::Semicolon => {
                return Err(SyntaxError {
                    line: *line,
                    reason: "unexpected ';': no directive before it".into(),
                });
            }
        };
        let mut args = Vec::new();
        loop {
            match tokens.get(*position) {
                None => {
                    return Err(SyntaxError {
                        line: *line,
                        reason: format!("{name}: unexpected end of file, expecting ';' or '{{'"),
                    });
                }
                Some((Token::Word(word), _)) => {
                    args.push(word.clone());
                    *position += 1;
                }
                Some((Token::Semicolon, _)) => {
                    *position += 1;
                    directives.push(Directive {
                        name,
                        args,
                        line: *line,
                        block: None,
                    });
                    break;
                }
                Some((Token::Open, _)) => {
                    *position += 1;
                    let block = parse_block(tokens, position, Some(*line))?;
                    directives.push(Directive {
                        name,
                        args,
                        line: *line,
                        block: Some(block),
                    });
                    break;
                }
                Some((Token::Close, close)) => {
                    return Err(SyntaxError {
                        line: *close,
                        reason: format!("{name}: unexpected '}}', expecting ';'"),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Token> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    fn word(w: &str) -> Token {
        Token::Word(w.into())
    }

    #[test]
    fn words_braces_and_semicolons_are_tokens_and_comments_are_skipped() {
        assert_eq!(
            words("upstream api { # the API\n server 10.0.0.1:80; }"),
            vec![
                word("upstream"),
                word("api"),
                Token::Open,
                word("server"),
                word("10.0.0.1:80"),
                Token::Semicolon,
                Token::Close,
            ]
        );
    }

    #[test]
    fn quoted_strings_keep_spaces_and_special_characters_and_resolve_escapes() {
        assert_eq!(
            words(r#"add_header X "a b; {c}" 'it\'s' "say \"hi\"\t\x";"#),
            vec![
                word("add_header"),
                word("X"),
                word("a b; {c}"),
                word("it's"),
                word("say \"hi\"\t\\x"),
                Token::Semicolon,
            ]
        );
    }

    #[test]
    fn a_hash_inside_a_word_or_a_string_is_not_a_comment() {
        assert_eq!(
            words("return 200 a#b \"#c\";"),
            vec![
                word("return"),
                word("200"),
                word("a#b"),
                word("#c"),
                Token::Semicolon
            ]
        );
    }

    #[test]
    fn a_braced_variable_stays_inside_its_word() {
        assert_eq!(
            words("hash ${arg_user}x;"),
            vec![word("hash"), word("${arg_user}x"), Token::Semicolon]
        );
    }

    #[test]
    fn an_escaped_semicolon_does_not_end_a_word() {
        assert_eq!(
            words(r"rewrite a\;b c;"),
            vec![word("rewrite"), word(r"a\;b"), word("c"), Token::Semicolon]
        );
    }

    #[test]
    fn directives_nest_and_know_their_lines() {
        let text = "worker_processes 2;\n\nhttp {\n  server {\n    listen 80;\n  }\n}\n";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].name, "worker_processes");
        assert_eq!(parsed[0].args, vec!["2"]);
        assert_eq!(parsed[0].line, 1);
        let http = &parsed[1];
        assert_eq!((http.name.as_str(), http.line), ("http", 3));
        let server = &http.children()[0];
        assert_eq!(server.line, 4);
        let listen = &server.children()[0];
        assert_eq!((listen.name.as_str(), listen.line), ("listen", 5));
        assert!(listen.block.is_none());
    }

    #[test]
    fn a_multi_line_string_counts_its_lines() {
        let parsed = parse("a \"x\ny\";\nb;").unwrap();
        assert_eq!(parsed[0].args, vec!["x\ny"]);
        assert_eq!(parsed[1].line, 3);
    }

    #[test]
    fn an_empty_block_and_an_empty_file_parse() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("events {}").unwrap()[0].block, Some(vec![]));
    }

    #[test]
    fn an_unclosed_block_names_the_line_it_opened_on() {
        let err = parse("http {\n  server {\n    listen 80;\n  }\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.reason.contains("not closed"), "{err}");
    }

    #[test]
    fn a_missing_semicolon_is_an_error() {
        let err = parse("http {\n  listen 80\n}").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.reason.contains("expecting ';'"), "{err}");
        let err = parse("listen 80").unwrap_err();
        assert!(err.reason.contains("end of file"), "{err}");
    }

    #[test]
    fn a_stray_brace_or_semicolon_is_an_error() {
        assert_eq!(parse("a;\n}").unwrap_err().line, 2);
        assert!(
            parse("{ a; }")
                .unwrap_err()
                .reason
                .contains("name before it")
        );
        assert!(parse(";").unwrap_err().reason.contains("no directive"));
    }

    #[test]
    fn an_unclosed_string_names_the_line_it_opened_on() {
        let err = parse("a;\nb \"never\n\nclosed;").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn text_shows_a_directive_as_written_on_one_line() {
        let parsed = parse("add_header X-A \"a b\";\nlocation /x { }").unwrap();
        assert_eq!(parsed[0].text(), "add_header X-A \"a b\"");
        assert_eq!(parsed[1].text(), "location /x { … }");
    }
}
