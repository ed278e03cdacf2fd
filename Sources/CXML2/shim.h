#pragma once
// Debian builds libxml2 with ICU, and its encoding.h then includes the system's ICU headers, which clash with the ICU
// copy inside Swift's Foundation. Starling never touches libxml2's encoding handlers (the only declarations that
// depend on ICU), so the headers are read as if ICU were off.
#include <libxml/xmlversion.h>
#undef LIBXML_ICU_ENABLED
#include <libxml/parser.h>
#include <libxml/xmlreader.h>
#include <libxml/xmlerror.h>
// libxml2 prints parse errors to stderr by default; Starling reports them itself, one line naming the file.
static void starling_xml_ignore_error(void *context, const char *message, ...) { (void)context; (void)message; }
static inline void starling_xml_silence_errors(void) {
    xmlSetGenericErrorFunc(NULL, starling_xml_ignore_error);
    xmlSetStructuredErrorFunc(NULL, NULL);
}
